"""Turning config groups into objects: `hydra.utils.instantiate` with one-line errors, the few keys
trainlab reads itself before the rest goes to a `_target_`, and the assembly of a whole run (data,
model, optimizer, schedule, metrics) that `train`, `evaluate` and `summary` share."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from trainlab.core.config import Settings
from trainlab.core.errors import CheckpointError, ConfigError, TrainlabError
from trainlab.core.runtime import Runtime
from trainlab.data import ImageData
from trainlab.data.base import DeviceBatches, data_placement
from trainlab.engine.distributed import SINGLE, Group, check_batch
from trainlab.engine.step import Stepper
from trainlab.metrics import ClassificationMetrics
from trainlab.models import frozen, initialize
from trainlab.optim import LRSchedule, WeightEMA, build_optimizer, fused_choice
from trainlab.record.checkpoint import TrainingState, load_checkpoint

log = logging.getLogger(__name__)


def build(node: DictConfig | dict, group: str, **kwargs: Any) -> Any:
    """Instantiate a group's `_target_`; a wrong key or type becomes one ConfigError line naming the group."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, TrainlabError):
            raise cause from None
        detail = " ".join(str(cause or e).split())
        raise ConfigError(f"cannot build {group} ({_target(node)}): {detail}; check the {group}.* keys") from None


def build_loggers(cfg: DictConfig) -> list:
    """The `logger` group's loggers (a list-valued group: each chosen option is a key under `logger`)."""
    nodes = cfg.get("logger") or {}
    return [build(node, f"logger.{name}") for name, node in nodes.items()]


def build_partial(node: DictConfig, group: str, **call_kwargs: Any) -> Any:
    """Instantiate a `_partial_: true` group and call it with what only the runner knows (num_classes, ...)."""
    make = build(node, group)
    try:
        return make(**call_kwargs)
    except TypeError as e:
        raise ConfigError(f"cannot build {group} ({_target(node)}): {e}; check the {group}.* keys") from None


def build_schedule(cfg: DictConfig, settings: Settings, optimizer: torch.optim.Optimizer,
                   steps_per_epoch: int) -> LRSchedule:
    """The `scheduler` group's torch scheduler, driven as the `lr_schedule` block says."""
    unset = tuple(key for key, value in cfg.scheduler.items() if value is None)
    return LRSchedule(build(cfg.scheduler, "scheduler"), optimizer, length=(settings.trainer.epochs, steps_per_epoch),
                      unset=unset, **vars(settings.lr_schedule))


# Losses that take log-probabilities: given a model's raw logits they have no lower bound (the logits run off and
# the loss goes negative), so they are refused rather than silently trained on the wrong input.
LOG_PROBABILITY_LOSSES = (torch.nn.NLLLoss, torch.nn.KLDivLoss)


def build_criterion(cfg: DictConfig, augment) -> torch.nn.Module:
    """The `loss` group's training criterion, which takes the model's logits (and, under MixUp/CutMix, soft
    targets)."""
    criterion = build(cfg.loss, "loss")
    name = type(criterion).__name__
    if isinstance(criterion, LOG_PROBABILITY_LOSSES):
        raise ConfigError(f"loss._target_={_target(cfg.loss)} expects log-probabilities, and the model outputs "
                          "logits: use loss=cross_entropy (log-softmax and NLL in one, the same loss on logits)")
    if augment.mixes and not isinstance(criterion, torch.nn.CrossEntropyLoss):
        raise ConfigError(f"augment.mixup_alpha/cutmix_alpha make soft targets, which {name} does not take: use "
                          "loss=cross_entropy, or set both alphas to 0")
    return criterion


def check_components(cfg: DictConfig, settings: Settings, start_weights: bool = True) -> None:
    """Build each component once, without data (the model on the meta device: no memory, no time), so that
    a bad value is one line before the run directory exists. Each constructor checks its own arguments."""
    data = build(cfg.dataset, "dataset")
    if data.normalize == "weights" and not cfg.model.get("weights"):
        weights_normalization(None)  # the one-line refusal
    augment = build(cfg.augment, "augment", mean=data.mean, std=data.std, channels=None)
    weights = cfg.model.get("weights")
    with torch.device("meta"):
        model = architecture(cfg, 2, int(cfg.model.get("in_channels") or 3),
                             pretrained=start_weights and not _weights_file(weights))
    if start_weights and _weights_file(weights):  # readable, and fits but for the classifier
        _misfits(model, read_weights(str(weights))[0], str(weights))
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer(build(cfg.optimizer, "optimizer"), [param])
    build_schedule(cfg, settings, optimizer, steps_per_epoch=1)
    build_criterion(cfg, augment)
    build_partial(cfg.metrics, "metrics", num_classes=2, split="val")  # metrics.average / top_k
    build_loggers(cfg)  # an optional tracker that is not installed is one line here, not at the first epoch
    del model


def _target(node: Any) -> str:
    try:
        return str(node.get("_target_", "?"))
    except AttributeError:
        return "?"


@dataclass
class Run:
    data: ImageData
    stepper: Stepper
    train_loader: torch.utils.data.DataLoader | DeviceBatches
    val_loader: torch.utils.data.DataLoader | DeviceBatches
    n_train: int                      # batches per epoch, after trainer.limit_train_batches
    n_val: int
    train_metrics: ClassificationMetrics
    val_metrics: ClassificationMetrics
    choices: dict                     # the config group options picked (model: resnet18, ...), as Hydra recorded them
    ema_metrics: ClassificationMetrics | None = None


def _weights_file(weights: Any) -> bool:
    return bool(weights) and (str(weights).endswith(".ckpt") or Path(str(weights)).expanduser().is_file())


def tune_runtime(runtime: Runtime, cfg: DictConfig, settings: Settings, data: ImageData,
                 group: Group = SINGLE, kept: dict | None = None) -> Runtime:
    """Settle an `auto` precision / memory format by measuring (trainlab.engine.autotune), before the model is built
    in its final format. In a process group rank 0 measures and every rank takes its choice. `kept`: the
    choice a resumed run was trained with; it stays, so the run continues with the same numerics."""
    from trainlab.engine import autotune

    options = autotune.candidates(runtime.device, settings.trainer.precision, settings.trainer.channels_last)
    try_compile = settings.trainer.compile == "auto" and runtime.device.startswith("cuda")
    if not settings.trainer.autotune or (len(options) < 2 and not try_compile):
        return runtime
    tuned = ("precision", "channels_last") + (("compile",) if try_compile else ())
    if kept:
        kept = {"compile": False} | kept  # runs from before compile was a candidate
        if autotune.Candidate(kept["precision"], bool(kept["channels_last"])) in options:
            runtime = runtime.settled(dict.fromkeys(tuned, "autotune: kept from the resumed run"),
                                      precision=kept["precision"], channels_last=bool(kept["channels_last"]),
                                      compile=bool(kept["compile"]) if try_compile else runtime.compile,
                                      autotune={"kept": True, **kept})
            log.info("autotune: precision=%s channels_last=%s%s, as the run was trained until now",
                     runtime.precision, str(runtime.channels_last).lower(),
                     f" compile={str(runtime.compile).lower()}" if try_compile else "")
            return runtime
    model_config = OmegaConf.to_container(cfg.model, resolve=True)
    model_config.pop("weights", None)  # timing needs the architecture, not the weights

    channels = input_channels(cfg, data.channels)

    def make_model() -> torch.nn.Module:
        return architecture(cfg, data.num_classes, channels, pretrained=False)

    shape = (channels, data.image_size, data.image_size)
    decision = autotune.decide(make_model, model_config, runtime.torch_device, options,
                               autotune.Workload(shape, data.num_classes, data.batch_size),
                               try_compile=try_compile) if group.is_main else None
    if group.world_size > 1:
        decision = group.broadcast(decision)  # every rank trains as rank 0 measured
    choice = decision.choice
    measured = ", ".join(f"{label} {ips:.0f}" for label, ips in decision.speeds.items())
    how = "cached for this machine and model" if decision.cached else f"measured in {decision.seconds:.1f} s"
    log.info("autotune: training images/s: %s -> %s (%s; trainer.autotune=false or explicit values skip this)",
             measured, choice.label, how)
    return runtime.settled(dict.fromkeys(tuned, f"autotune: fastest training steps ({how})"),
                           precision=choice.precision, channels_last=choice.channels_last,
                           compile=choice.compile if try_compile else runtime.compile, autotune=decision.to_dict())


def input_channels(cfg: DictConfig, data_channels: int) -> int:
    """The channels the model takes: `model.in_channels`, or (null) the data set's. A grayscale set feeds an
    RGB model (torchvision's ResNets) by repeating its channel; other mismatches are refused."""
    wanted = int(cfg.model.get("in_channels") or data_channels)
    if wanted != data_channels and not (data_channels == 1 and wanted == 3):
        raise ConfigError(f"model.in_channels={wanted} does not fit the data set's {data_channels} channel(s): set "
                          "model.in_channels=null (the data's channels)")
    return wanted


def data_channels(ckpt: dict) -> int:
    """The channels of the data a checkpoint was trained on (one mean per channel)."""
    return len((ckpt.get("normalization") or {}).get("mean") or (0, 0, 0))


def build_model(cfg: DictConfig, num_classes: int, classes: list[str], runtime: Runtime,
                start_weights: bool = True, channels: int = 3) -> torch.nn.Module:
    """The configured model. `model.weights` (a trainlab checkpoint, a state dict or safetensors file, or a
    torchvision weight name) is where a new run starts; `start_weights=False` for a model whose own weights
    are loaded next (evaluate, predict, export, resume), so the starting point is neither read nor downloaded.
    `channels`: the data's (see `input_channels`)."""
    weights = cfg.model.get("weights")
    from_file = _weights_file(weights)
    # A file is loaded below; a torchvision weight name is the factory's own business.
    model = architecture(cfg, num_classes, input_channels(cfg, channels), pretrained=start_weights and not from_file)
    if from_file and start_weights:
        start_from(model, str(weights), classes)
    memory_format = torch.channels_last if runtime.channels_last else torch.preserve_format
    return model.to(runtime.torch_device, memory_format=memory_format)


COMMON_MODEL_KEYS = ("init", "freeze")  # every model's, applied here to what the `_target_` builds


def architecture(cfg: DictConfig, num_classes: int, in_channels: int, pretrained: bool) -> torch.nn.Module:
    """The `model` group's `_target_` called with what only the runner knows, then `model.init` and
    `model.freeze` applied. `pretrained`: pass a torchvision weight name in `model.weights` on to the builder
    (otherwise the weights are loaded from a file afterwards, or not at all)."""
    node = OmegaConf.to_container(cfg.model, resolve=True)
    init, freeze = (node.pop(key) for key in COMMON_MODEL_KEYS)
    if not pretrained:
        node["weights"] = None
    model = build_partial(OmegaConf.create(node), "model", num_classes=num_classes, in_channels=in_channels)
    return frozen(initialize(model, init, skip_pretrained=bool(node.get("weights"))), freeze)


def start_from(model: torch.nn.Module, weights: str, classes: list[str]) -> None:
    """Load `weights` into a freshly built model. A classifier for other classes (another count, or a trainlab
    checkpoint of other class ids) is re-initialised and said so; any other layer that does not fit is an error
    naming the first few."""
    state, source_classes = read_weights(weights)
    own = model.state_dict()
    head = head_keys(model)
    differ = _misfits(model, state, weights)
    other_classes = source_classes is not None and list(source_classes) != list(classes)
    fresh = set(head) if (other_classes or any(k in head for k in differ)) else set()
    model.load_state_dict({k: v for k, v in state.items() if k in own and k not in fresh}, strict=False)
    ignored = [k for k in state if k not in own]
    log.info("model weights initialised from %s%s%s", weights,
             f"; the classifier ({', '.join(sorted(fresh))}) is re-initialised for this data's {len(classes)} classes"
             if fresh else "", f"; {len(ignored)} tensors of the file are not in this model" if ignored else "")


def _misfits(model: torch.nn.Module, state: dict, weights: str) -> list[str]:
    """The model's tensors the file lacks or holds in another shape; an error unless they are all the classifier's."""
    own, head = model.state_dict(), head_keys(model)
    differ = [k for k in own if k not in state or state[k].shape != own[k].shape]
    bad = [k for k in differ if k not in head]
    if bad:
        first = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "")
        raise CheckpointError(f"model.weights={weights} does not fit this model: {len(bad)} of its {len(own)} "
                              f"tensors are missing or of another shape ({first}); pick the matching model= (and "
                              "model.arch/small_stem), or a file saved from it")
    return differ


def read_weights(weights: str) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """(state dict, the class ids of its output when the file says) of a trainlab checkpoint (.ckpt), a
    safetensors file (with a trainlab model.json beside it, classes too), or a plain state dict (.pth/.pt)."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"model.weights={weights} is not a file: pass a .ckpt, .safetensors, .pth/.pt "
                              "file or a torchvision weight name")
    if path.suffix == ".ckpt":
        ckpt = load_checkpoint(path)
        return ckpt["model"], list(ckpt["classes"])
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"model.weights={weights} is not a readable safetensors file ({e})") from None
        sidecar = path.parent / "model.json"
        classes = json.loads(sidecar.read_text()).get("classes") if sidecar.is_file() else None
        return state, classes
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it, a truncated file, not a torch file at all
        import zipfile

        with open(path, "rb") as f:
            torch_file = zipfile.is_zipfile(path) or f.read(1) == b"\x80"  # torch.save's zip, or a bare pickle
        why = ("it is not a file torch.save wrote" if not torch_file else
               "it holds pickled objects other than tensors, which could run code" if "Weights only load failed"
               in str(e) else " ".join(str(e).split())[:120])
        raise CheckpointError(f"model.weights={weights} cannot be loaded as a plain state dict ({why}); pass a "
                              ".ckpt, .safetensors or tensors-only .pth/.pt file") from None
    state = loaded.get("state_dict", loaded.get("model", loaded)) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"model.weights={weights} holds no state dict (name -> tensor)")
    # Saved from a DDP or torch.compile wrapper: the same tensors under a prefix.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state, None


# What torchvision's ImageNet weights were trained with (and what a plain state dict is assumed to expect).
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def weights_normalization(weights: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """`dataset.normalize=weights`: the mean/std the starting weights were trained with."""
    if not weights:
        raise ConfigError("dataset.normalize=weights needs model.weights (the weights whose normalisation to use); "
                          "use dataset.normalize=data without them")
    path = Path(str(weights)).expanduser()
    recorded = None
    if path.suffix == ".ckpt" and path.is_file():
        recorded = load_checkpoint(path).get("normalization")
    elif path.suffix == ".safetensors" and (path.parent / "model.json").is_file():
        recorded = json.loads((path.parent / "model.json").read_text()).get("normalization")
    if recorded:
        log.info("normalisation: the mean/std %s was trained with (dataset.normalize=weights)", weights)
        return tuple(recorded["mean"]), tuple(recorded["std"])
    log.info("normalisation: ImageNet's mean/std, which torchvision's pretrained weights expect and %s is assumed to "
             "(dataset.normalize=weights)", weights)
    return IMAGENET_NORMALIZATION


def head_keys(model: torch.nn.Module) -> list[str]:
    """The state-dict keys of the classifier: the last Linear layer."""
    last = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)][-1]
    return [f"{last}.{k}" for k in dict(model.named_modules())[last].state_dict()]


def build_run(cfg: DictConfig, settings: Settings, runtime: Runtime, group: Group = SINGLE,
              resume: TrainingState | None = None) -> Run:
    """Everything one training process needs; in a process group its loaders read this rank's share.
    `resume`: a resumed run keeps its own precision, memory format and normalisation."""
    trainer = settings.trainer
    data = build(cfg.dataset, "dataset")
    check_batch(data.batch_size, group.world_size)
    with group.main_first():
        data.setup(("train", "val"))
    data.fit_batch_to(group.world_size)
    if resume is not None:
        data.mean, data.std = tuple(resume.normalization["mean"]), tuple(resume.normalization["std"])
    elif data.normalize == "weights":
        data.mean, data.std = weights_normalization(cfg.model.get("weights"))
    runtime = tune_runtime(runtime, cfg, settings, data, group, resume.speed if resume else None)
    make_optimizer = build(cfg.optimizer, "optimizer")
    fused, why_fused = fused_choice(make_optimizer, runtime.device)
    log.info("runtime: optimizer = %s", why_fused)
    on_device, why_placed = data_placement(trainer.data_on_device, data, runtime.torch_device)
    log.info("runtime: data_on_device = %s (%s)", str(on_device).lower(), why_placed)
    runtime = runtime.settled({"optimizer": why_fused, "data_on_device": why_placed}, data_on_device=on_device)
    model = build_model(cfg, data.num_classes, data.classes, runtime, start_weights=resume is None,
                        channels=data.channels)
    optimizer = build_optimizer(make_optimizer, model.parameters(), **fused)
    shard = {"pin_memory": runtime.device != "cpu", "rank": group.rank, "world": group.world_size,
             "device": runtime.torch_device if on_device else None}
    train_loader = data.loader("train", seed=settings.seed, **shard)
    val_loader = data.loader("val", **shard)
    if not on_device:
        log.info("data loading: %d DataLoader worker processes (dataset.num_workers)%s", data.num_workers,
                 ": a batch is one gather from the decoded images in memory, and workers measured slower than none "
                 "on small machines (scripts/bench_data.py); raise it if your augmentation is heavy"
                 if not data.num_workers else "")
    n_train = min(len(train_loader), trainer.limit_train_batches or len(train_loader))
    n_val = min(len(val_loader), trainer.limit_val_batches or len(val_loader))
    # Steps per epoch: with accumulation, one per accumulate_grad_batches batches (and one for a remainder).
    schedule = build_schedule(cfg, settings, optimizer, -(-n_train // trainer.accumulate_grad_batches))
    metrics = {split: build_partial(cfg.metrics, "metrics", num_classes=data.num_classes, split=split,
                                    with_auroc=split != "train", device=runtime.torch_device)
               for split in ("train", "val") + (("val_ema",) if trainer.ema_decay is not None else ())}
    if runtime.compile:
        log.info("compiling the model with torch.compile (the first steps are slow while it compiles)")
    forward = torch.compile(model) if runtime.compile else model
    wrapped = group.wrap(model)
    train_forward = forward if wrapped is model else (torch.compile(wrapped) if runtime.compile else wrapped)
    augment = build(cfg.augment, "augment", mean=data.mean, std=data.std, channels=input_channels(cfg, data.channels))
    criterion = build_criterion(cfg, augment)
    ema = None
    if trainer.ema_decay is not None:
        ema = WeightEMA(model, trainer.ema_decay)
        log.info("EMA: a moving average of the weights (decay %g per optimizer step), validated as val_ema/*",
                 trainer.ema_decay)
    if trainer.accumulate_grad_batches > 1:
        log.info("gradient accumulation: one optimizer step per %d batches, an effective batch of %d",
                 trainer.accumulate_grad_batches, trainer.accumulate_grad_batches * data.batch_size)
    stepper = Stepper(model, forward, train_forward, optimizer, schedule, criterion, augment,
                      runtime.grad_scaler(), runtime, trainer.l1, trainer.grad_clip, group, data.num_classes,
                      trainer.accumulate_grad_batches, ema)
    return Run(data, stepper, train_loader, val_loader, n_train, n_val, metrics["train"], metrics["val"], {},
               metrics.get("val_ema"))
