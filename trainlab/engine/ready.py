"""From a checkpoint (or a safetensors export) to a run and a model ready to use, the one way every command takes:
`stored_run` (the checkpoint read once, its stored config with the command line applied and checked) and
`ready_model` (the network rebuilt, its weights loaded, on the device, at the precision and memory format it was
trained with, with its normalisation). evaluate, predict, export, visualize, summary and compare all use these."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from trainlab.augment import Normalize
from trainlab.core.config import load_settings
from trainlab.core.errors import ConfigError, DataError
from trainlab.core.runtime import Runtime, check_hardware, resolve_runtime
from trainlab.engine.build import build, build_model, check_components, data_channels, input_channels
from trainlab.engine.step import forward_split, model_input
from trainlab.record.checkpoint import load_checkpoint
from trainlab.record.exports import load_export
from trainlab.record.stored_run import config_from_checkpoint, on_this_machine

log = logging.getLogger(__name__)

DEFAULT_NORMALIZATION = {"mean": [0.5] * 3, "std": [0.25] * 3}  # checkpoints from before they stored theirs


def read_stored(path: Path) -> dict:
    """A checkpoint, or a safetensors export in a checkpoint's shape."""
    return load_export(path) if Path(path).suffix == ".safetensors" else load_checkpoint(path)


def stored_run(path: Path, overrides: list[str], own_keys: tuple[str, ...], needs_data: bool = True,
               anywhere: bool = False, ckpt: dict | None = None) -> tuple[dict, DictConfig, list[str]]:
    """The one way from a checkpoint to a run (train's resume, evaluate, compare, summary, predict, export):
    (checkpoint, config to run with, changed overrides), checked before anything is written: the stored config
    with the command line applied, its settings validated, the hardware present and (`needs_data`) its data folder
    there. `anywhere`: a command that only runs the model (predict, export) takes a GPU-trained checkpoint onto a
    CPU. `ckpt`: the checkpoint already read by this process (it is read once)."""
    ckpt = read_stored(path) if ckpt is None else ckpt
    if anywhere:
        overrides = on_this_machine(ckpt["config"]) + list(overrides)
    cfg, changed = config_from_checkpoint(ckpt["config"], overrides, ckpt.get("choices", {}), own_keys=own_keys)
    settings = load_settings(cfg)
    check_hardware(settings.device.type, settings.trainer.precision)
    check_components(cfg, settings, start_weights=False)  # the checkpoint's own weights replace the starting point
    root = OmegaConf.select(cfg, "dataset.root") if needs_data else None
    if root and not Path(str(root)).expanduser().exists():
        if any(c.startswith("dataset.root=") for c in changed):
            raise DataError(f"dataset.root={root} does not exist: pass the folder that holds the data")
        raise DataError(f"the data this checkpoint was trained on is no longer at {root}: pass "
                        "dataset.root=<where the data is now>")
    if needs_data:
        build(cfg.dataset, "dataset").check_root()
    return ckpt, cfg, changed


def which_weights(ckpt: dict, which: str) -> str:
    """`weights=auto`: the weights the checkpoint was chosen by - their moving average (`ema`) when the run's
    checkpoint.monitor watched a val_ema/ metric, else the trained ones (`model`). Otherwise `which` as given."""
    if which != "auto":
        return which
    monitor = str(((ckpt.get("config") or {}).get("checkpoint") or {}).get("monitor") or "")
    chosen = "ema" if monitor.startswith("val_ema/") and ckpt.get("ema") else "model"
    log.info("weights: %s (%s; weights=model or weights=ema to choose)", chosen,
             f"checkpoint.monitor={monitor} chose this checkpoint by the moving average's score" if chosen == "ema"
             else "the trained weights")
    return chosen


def model_weights(ckpt: dict, which: str, path) -> dict:
    """The checkpoint's trained weights (`model`) or their moving average (`ema`, with trainer.ema_decay)."""
    if which not in ("model", "ema"):
        raise ConfigError(f"weights must be auto, model or ema (got {which!r})")
    if which == "model":
        return ckpt["model"]
    if not ckpt.get("ema"):
        raise ConfigError(f"{path} holds no EMA weights: train with trainer.ema_decay=0.999 (or evaluate "
                          "weights=model)")
    return {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}


def trained_runtime(ckpt: dict, cfg: DictConfig, command: str) -> Runtime:
    """The device of the config, at the precision and memory format the checkpoint was trained with where its
    config left them to autotune (`auto`): its numbers, not a new measurement. Explicit settings (the stored ones,
    or the command line's) win; fp16 autocast, which needs a GPU, runs in fp32 on a CPU."""
    settings = load_settings(cfg, require_data=False)
    trainer, speed = settings.trainer, dict(ckpt.get("speed") or {})
    precision = str(speed.get("precision", "auto")) if trainer.precision == "auto" else trainer.precision
    channels_last = str(speed.get("channels_last", "auto")).lower() if trainer.channels_last == "auto" \
        else trainer.channels_last
    if settings.device.type == "cpu" and precision == "16-mixed":
        precision = "32"
    if settings.device.count > 1:
        log.info("%s runs in one process: device.count=%d applies to training only", command, settings.device.count)
    runtime = resolve_runtime(settings.device.type, precision, channels_last, trainer.threads, False,
                              autotune=trainer.autotune)
    if speed:
        log.info("%s: precision=%s channels_last=%s, as the checkpoint was trained", command, runtime.precision,
                 str(runtime.channels_last).lower())
    return runtime


def plain_cpu() -> Runtime:
    """fp32, contiguous, on the CPU: what another program loads (export) and what a layer table shows (summary)."""
    return Runtime("cpu", "32", False, torch.get_num_threads(), False, {})


@dataclass
class ReadyModel:
    """A checkpoint's model in eval mode on its device, with what it takes and what it tells apart."""
    model: torch.nn.Module
    runtime: Runtime
    normalize: Normalize     # scales uint8 images and normalises them as the training data were
    classes: list[str]
    class_names: list[str]
    normalization: dict         # {"mean": [...], "std": [...]}
    data_channels: int          # of the data it was trained on (1: grayscale)
    channels: int               # the model's input channels
    size: int                   # the input's height and width
    batch_size: int
    epoch: int

    def input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) images as the model takes them: on its device, normalised, in its memory format."""
        return model_input(images, self.normalize, self.runtime)

    def logits(self, batches) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits as float32 on the CPU, labels) for every (images, labels) batch, at the model's precision."""
        return predict_logits(self.model, batches, self.normalize, self.runtime)


def predict_logits(model: torch.nn.Module, batches, normalize: Normalize,
                   runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits as float32 on the CPU, labels) for every (uint8 images, labels) batch: the pass validation takes
    (step.forward_split), collected."""
    model.eval()
    all_logits, all_labels = [], []
    for logits, labels in forward_split(model, batches, normalize, runtime):
        all_logits.append(logits.float())
        all_labels.append(labels)
    return torch.cat(all_logits).cpu(), torch.cat(all_labels).cpu()


def ready_model(ckpt: dict, cfg: DictConfig, runtime: Runtime, weights: str = "model", path="") -> ReadyModel:
    """The checkpoint's network rebuilt from its config and loaded with its `weights` (model or ema)."""
    classes, channels = list(ckpt["classes"]), data_channels(ckpt)
    model = build_model(cfg, len(classes), classes, runtime, start_weights=False, channels=channels)
    model.load_state_dict(model_weights(ckpt, weights, path))
    model.eval()
    norm = ckpt.get("normalization") or DEFAULT_NORMALIZATION
    wanted = input_channels(cfg, channels)
    return ReadyModel(model, runtime, Normalize(norm["mean"], norm["std"], channels=wanted), classes,
                      list(ckpt["class_names"]), norm, channels, wanted, int(cfg.dataset.image_size),
                      int(cfg.dataset.batch_size), int(ckpt.get("epoch", 0)))


def to_gray(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (N, 3, H, W) -> (N, 1, H, W) with ITU-R 601 luma, rounded as PIL's convert("L"): image files read
    for a model trained on grayscale data."""
    weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
    return ((pixels.to(torch.int32) * weights).sum(1, keepdim=True) + 500).div(1000, rounding_mode="floor") \
        .to(torch.uint8)
