"""Model builders: torchvision ResNets (with the optional 64x64 stem), a small CNN and an MLP.

`num_classes` and `in_channels` come from the runner (the data set; see engine.build.input_channels). The keys
every model has, `init` and `freeze`, are applied by the runner to whatever a builder returns (`initialize`,
`frozen`), so the builders only make the architecture. Nothing is downloaded unless
`weights` names torchvision pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

from trainlab.core.errors import ConfigError, require

ARCHS = ("resnet18", "resnet34", "resnet50")
INITS = ("default", "kaiming", "xavier")


def _check(dropout: float) -> None:
    require(0.0 <= float(dropout) < 1.0, f"model.dropout must be in [0, 1) (got {dropout})")


def resnet(num_classes: int, arch: str, small_stem: bool, dropout: float, weights: str | None,
           in_channels: int) -> nn.Module:
    """The values come from conf/model/resnet*.yaml. `in_channels=3` (torchvision's): a grayscale data set
    is repeated into 3 channels by the runner; 1 builds a one-channel conv1 (from random weights only)."""
    in_channels = int(in_channels)
    require(in_channels == 3 or not weights, f"model.in_channels={in_channels} cannot start from pretrained RGB "
                                             "weights: use model.in_channels=3 (grayscale is repeated into 3)")
    require(arch in ARCHS, f"model.arch must be one of {', '.join(ARCHS)} (got {arch!r})")
    _check(dropout)
    builder = getattr(torchvision.models, arch)
    if weights:
        # Pretrained weights have a 1000-way head: load them as they are, then replace the head.
        model = builder(weights=_pretrained(arch, str(weights)))
    else:
        model = builder(weights=None, num_classes=num_classes)
    if small_stem:
        # 3x3 stride-1 conv1 without max-pool keeps 64x64 inputs at full resolution into layer1
        # (what published from-scratch Tiny-ImageNet results use).
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    in_features = model.fc.in_features
    head = nn.Linear(in_features, num_classes) if (weights or dropout) else model.fc
    model.fc = nn.Sequential(nn.Dropout(dropout), head) if dropout else head
    return model


def _pretrained(arch: str, name: str):
    """torchvision's weights enum for `name`, with the file already in torch's hub cache (downloaded once
    if there is a network): one clear line instead of a traceback when it cannot be had."""
    from urllib.error import URLError

    options = torchvision.models.get_model_weights(arch)
    if name not in options.__members__:
        raise ConfigError(f"model.weights={name} is neither a file nor one of {arch}'s torchvision weights "
                          f"({', '.join(options.__members__)}); pass a trainlab checkpoint, a weight name, or null")
    weights = options[name]
    try:
        weights.get_state_dict(progress=False, check_hash=True)  # downloads into the hub cache, or reads it
    except (URLError, OSError, RuntimeError) as e:
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        reason = " ".join(str(getattr(e, "reason", e)).split())[:100]
        raise ConfigError(f"cannot download {arch} weights {name} ({reason}): on a machine without network, copy "
                          f"{weights.url.rsplit('/', 1)[-1]} (from {weights.url}) into {folder}, or use "
                          "model.weights=null to start from random weights") from None
    return weights


def _no_pretrained(name: str, weights: str | None) -> None:
    require(not weights, f"model.weights={weights} is not a file, and {name} has no pretrained weights: pass a "
                         "trainlab checkpoint (.ckpt) or null")


def small_cnn(num_classes: int, width: int, dropout: float, weights: str | None, in_channels: int) -> nn.Module:
    """`weights`: only a trainlab checkpoint (loaded by the runner after the model is built)."""
    _check(dropout)
    _no_pretrained("small_cnn", weights)
    def block(cin: int, cout: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                             nn.ReLU(inplace=True))

    w = int(width)
    model = nn.Sequential(
        block(int(in_channels), w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2), block(2 * w, 4 * w),
        nn.MaxPool2d(2),
        block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(4 * w, num_classes),
    )
    return model


def mlp(num_classes: int, image_size: int, hidden: Sequence[int], dropout: float, weights: str | None,
        in_channels: int) -> nn.Module:
    """`weights`: only a trainlab checkpoint (loaded by the runner after the model is built)."""
    _check(dropout)
    _no_pretrained("mlp", weights)
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(in_channels) * int(image_size) ** 2
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def frozen(model: nn.Module, freeze: str | Sequence[str] | None) -> nn.Module:
    """`model.freeze`, every model's: `backbone` (every parameter but the classifier, the last Linear layer) or a
    list of parameter-name prefixes (`[conv1, bn1, layer1]`) stop learning: no gradient, no update, no weight decay.
    (BatchNorm running statistics still follow the data in training mode.)"""
    if not freeze:
        return model
    names = [n for n, _ in model.named_parameters()]
    if freeze == "backbone":
        head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        chosen = [n for n in names if not n.startswith(f"{head}.")]
    else:
        prefixes = [freeze] if isinstance(freeze, str) else [str(p) for p in freeze]
        unknown = [p for p in prefixes if not any(n == p or n.startswith(f"{p}.") for n in names)]
        top = list(dict.fromkeys(n.split(".")[0] for n in names))
        require(not unknown, f"model.freeze: no parameters under {', '.join(unknown)}; use backbone or prefixes of "
                             f"this model's parameter names ({', '.join(top[:12])})")
        chosen = [n for n in names if any(n == p or n.startswith(f"{p}.") for p in prefixes)]
    for name, param in model.named_parameters():
        if name in chosen:
            param.requires_grad_(False)
    return model


def initialize(model: nn.Module, init: str, skip_pretrained: bool = False) -> nn.Module:
    """`model.init`, every model's: re-initialise conv and linear weights (biases to zero); `default` keeps
    PyTorch's own init, and pretrained weights are kept as they are."""
    require(init in INITS, f"model.init must be one of {', '.join(INITS)} (got {init!r})")
    if init == "default" or skip_pretrained:
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def l1_norm(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over all parameters, for the optional L1 penalty."""
    return torch.stack([p.abs().sum() for p in model.parameters() if p.requires_grad]).sum()
