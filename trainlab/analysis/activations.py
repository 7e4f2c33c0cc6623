"""What the layers see: the outputs of a model's stages for an image (feature maps) and per-layer activation
statistics (mean, std, fraction of zeros after ReLU), the numbers that show dead or saturated layers.

Shared by `trainlab visualize` (one checkpoint, one image) and by training (`trainer.activations_every_n_epochs`:
a fixed validation batch every N epochs, into TensorBoard and activations.csv, read by the diagnostics)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

RESNET_STAGES = ("relu", "layer1", "layer2", "layer3", "layer4")  # the stem (after its ReLU), then each stage


def watched_layers(model: nn.Module) -> list[str]:
    """The layers shown by default: a ResNet's stem and four stages; any other model's ReLUs (each block's
    output in the small CNN, each hidden layer of the MLP). Only modules called once per forward qualify,
    which is why a ResNet's blocks (whose ReLU runs twice) are watched at the stage."""
    names = dict(model.named_modules())
    if all(stage in names for stage in RESNET_STAGES):
        return list(RESNET_STAGES)
    return [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]


def check_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    from trainlab.core.errors import ConfigError
    from trainlab.core.suggest import did_you_mean

    names = [n for n, _ in model.named_modules() if n]
    for layer in layers:
        if layer not in names:
            top = ", ".join(dict.fromkeys(n.split(".")[0] for n in names))
            raise ConfigError(f"layers: the model has no module {layer!r}{did_you_mean(layer, names)} (its modules: "
                              f"{top}, and their children as name.child)")
    return list(layers)


@torch.no_grad()
def capture(model: nn.Module, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The output of each named layer for input `x`, in eval mode (float32, detached, on the CPU)."""
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(
        lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach().float().cpu())) for name in layers]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return {name: outputs[name] for name in layers if name in outputs}


def statistics(outputs: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Mean, std and fraction of exact zeros of each layer's output over the batch."""
    return {name: {"mean": float(out.mean()), "std": float(out.std()) if out.numel() > 1 else 0.0,
                   "zero_fraction": float((out == 0).float().mean())} for name, out in outputs.items()}


def channel_grid(maps: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` channels of one image's (C, H, W) output, each scaled to [0, 1] on its own, tiled into one
    (1, H', W') image (a constant channel is shown as zeros)."""
    from torchvision.utils import make_grid

    maps = maps[:n].unsqueeze(1)
    low = maps.amin(dim=(2, 3), keepdim=True)
    span = (maps.amax(dim=(2, 3), keepdim=True) - low).clamp_min(1e-12)
    scaled = (maps - low) / span
    return make_grid(scaled, nrow=math.ceil(math.sqrt(len(maps))), padding=1, pad_value=1.0)[:1]


def feature_map_figure(maps: torch.Tensor, title: str, n: int):
    """A matplotlib figure of the first `n` channels of (C, H, W) maps, one panel each (viridis, own scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(n, maps.shape[0])
    cols = math.ceil(math.sqrt(shown))
    rows = math.ceil(shown / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < shown:
            ax.imshow(maps[k].numpy(), cmap="viridis")
            ax.set_title(f"ch {k}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def input_figure(image: torch.Tensor, title: str):
    """The uint8 (C, H, W) input image as the model got it (before normalisation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.6, 2.8))
    pixels = image.permute(1, 2, 0).numpy()
    ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray" if pixels.shape[-1] == 1 else None,
              vmin=0, vmax=255)
    ax.axis("off")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    return fig


def spatial(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the layers whose output is a feature map (N, C, H, W): an MLP's layers have none."""
    return {name: out for name, out in outputs.items() if out.ndim == 4}
