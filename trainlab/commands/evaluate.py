"""`trainlab evaluate`: rebuild a checkpoint's model and data transforms from the config stored in it,
predict one split, and write metrics.json, predictions.csv and confusion.csv.

Metric names are the training ones (`val/acc1`, ...; `train/...` for split=train). The unlabelled test
split gets predictions only.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig

from trainlab.augment import BatchAugment
from trainlab.core.config import load_settings
from trainlab.core.errors import ConfigError
from trainlab.core.fs import atomic_write_text
from trainlab.core.runtime import resolve_runtime, seed_everything
from trainlab.engine.build import build, build_model, build_partial, input_channels, tune_runtime
from trainlab.record.checkpoint import OUTPUTS_ROOT, find_checkpoint
from trainlab.record.recorder import class_labels, write_classes, write_confusion
from trainlab.record.stored_run import check_classes, stored_run

log = logging.getLogger(__name__)

SPLITS = ("val", "train", "test")
OWN_KEYS = ("ckpt", "split", "weights")  # evaluate's own keys; every other key=value applies to the stored config


def model_weights(ckpt: dict, which: str, path) -> dict:
    """The checkpoint's trained weights (`model`) or their moving average (`ema`, with trainer.ema_decay)."""
    if which not in ("model", "ema"):
        raise ConfigError(f"weights must be model or ema (got {which!r})")
    if which == "model":
        return ckpt["model"]
    if not ckpt.get("ema"):
        raise ConfigError(f"{path} holds no EMA weights: train with trainer.ema_decay=0.999 (or evaluate "
                          "weights=model)")
    return {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}


def checkpoint_path(spec: str) -> Path:
    """`ckpt=`: a .ckpt file, or a run directory (its best.ckpt, else last.ckpt), `latest` or a date, or a
    safetensors export (its folder or file)."""
    from trainlab.commands.export import exported_weights

    return exported_weights(str(spec)) or find_checkpoint(str(spec), OUTPUTS_ROOT, key="ckpt")


def default_eval_dir(ckpt: Path, split: str) -> Path:
    """Beside the checkpoint's run, `<run>/eval/<ckpt>-<split>-<time>`, when the checkpoint sits in a trainlab
    run; otherwise under outputs/eval/ (never in a folder of the user's)."""
    stamp = datetime.now()
    run = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and (run / "run.json").is_file():
        return run / "eval" / f"{ckpt.stem}-{split}-{stamp:%Y-%m-%d_%H-%M-%S}"
    return OUTPUTS_ROOT / "eval" / f"{stamp:%Y-%m-%d}" / f"{ckpt.stem}-{split}-{stamp:%H-%M-%S}"


@torch.inference_mode()
def predict(model: torch.nn.Module, loader, normalize: BatchAugment, runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits as float32 on the CPU, labels) for the whole loader, batched, at the run's precision."""
    model.eval()
    all_logits, all_labels = [], []
    for images, labels in loader:
        x = normalize.normalize(images.to(runtime.torch_device, non_blocking=True))
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with runtime.autocast():
            all_logits.append(model(x).float())
        all_labels.append(labels)
    return torch.cat(all_logits).cpu(), torch.cat(all_labels)


def evaluate(cfg: DictConfig, out_dir: Path, overrides: list[str]) -> dict:
    """`cfg` holds `ckpt` and `split`; `overrides` are the command line's key=value pairs, applied to the
    config stored in the checkpoint (e.g. another dataset.root)."""
    split = str(cfg.split)
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    path = checkpoint_path(str(cfg.ckpt))
    ckpt, run_cfg, changed = stored_run(path, overrides, OWN_KEYS)
    settings = load_settings(run_cfg)
    if settings.device.count > 1:
        log.info("evaluating in one process: device.count=%d applies to training only", settings.device.count)
    runtime = resolve_runtime(settings.device.type, settings.trainer.precision, settings.trainer.channels_last,
                              settings.trainer.threads, False, autotune=settings.trainer.autotune)
    seed_everything(settings.seed)
    data = build(run_cfg.dataset, "dataset")
    data.setup((split,))
    check_classes(ckpt["classes"], data.classes, str(path))
    tune_runtime(runtime, run_cfg, settings, data, kept=ckpt.get("speed"))  # as the run trained, where it can
    model = build_model(run_cfg, data.num_classes, data.classes, runtime, start_weights=False,
                        channels=data.channels)
    model.load_state_dict(model_weights(ckpt, str(cfg.get("weights", "model")), path))
    norm = ckpt.get("normalization", {"mean": data.mean, "std": data.std})
    normalize = BatchAugment(mean=norm["mean"], std=norm["std"], channels=input_channels(run_cfg, data.channels))
    start = time.perf_counter()
    loader = data.loader(split, pin_memory=runtime.device != "cpu", train=False)
    logits, labels = predict(model, loader, normalize, runtime)
    seconds = time.perf_counter() - start
    labelled = data.splits[split].labels is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = _metrics(run_cfg, logits, labels, split, data.num_classes, out_dir, data) if labelled else {}
    predictions = _predictions(run_cfg, logits, labels if labelled else None, data.splits[split].paths,
                               data.class_names)
    predictions.to_csv(out_dir / "predictions.csv", index=False)
    write_classes(out_dir / "classes.csv", data.classes, data.class_names)
    record = {"checkpoint": str(path), "epoch": ckpt["epoch"], "split": split,
              "weights": str(cfg.get("weights", "model")), "images": len(predictions),
              "seconds": seconds, "images_per_s": len(predictions) / max(seconds, 1e-9),
              "runtime": runtime.to_dict(), "changed": changed, "metrics": metrics}
    atomic_write_text(out_dir / "metrics.json", json.dumps(record, indent=2) + "\n")
    _print_table(record, out_dir)
    return record


def _metrics(cfg: DictConfig, logits, labels, split, num_classes, out_dir: Path, data) -> dict:
    metrics = build_partial(cfg.metrics, "metrics", num_classes=num_classes, split=split, with_auroc=True)
    criterion = build(cfg.loss, "loss")
    for chunk_logits, chunk_labels in zip(logits.split(4096), labels.split(4096)):
        metrics.update(chunk_logits, chunk_labels, criterion(chunk_logits, chunk_labels))
    values, confusion = metrics.compute()
    write_confusion(out_dir / "confusion.csv", confusion, class_labels(data.classes, data.class_names))
    return values


def _predictions(cfg: DictConfig, logits, labels: torch.Tensor | None, paths, names) -> pd.DataFrame:
    probs = logits.softmax(dim=1)
    k = min(5, logits.shape[1])
    top = probs.topk(k, dim=1)
    pred = top.indices[:, 0]
    frame = pd.DataFrame({"path": paths})
    if labels is not None:
        per_sample = build(cfg.loss, "loss", reduction="none")(logits, labels)
        frame["target"] = labels.numpy()
        frame["target_name"] = [names[i] for i in labels.tolist()]
    frame["pred"] = pred.numpy()
    frame["pred_name"] = [names[i] for i in pred.tolist()]
    frame["confidence"] = top.values[:, 0].numpy()
    frame[f"top{k}"] = [" ".join(map(str, row)) for row in top.indices.tolist()]
    if labels is not None:
        frame["loss"] = per_sample.numpy()
        frame["correct"] = (pred == labels).numpy()
    return frame


def _print_table(record: dict, out_dir: Path) -> None:
    from rich.table import Table

    from trainlab.core.progress import console as make_console

    console = make_console()
    console.print(f"{record['checkpoint']} (epoch {record['epoch']}) on {record['split']}: {record['images']} images, "
                  f"{record['images_per_s']:.0f} images/s"
                  + ("" if record["metrics"] else " (unlabelled: predictions only)"))
    if record["metrics"]:
        table = Table()
        table.add_column("metric")
        table.add_column("value", justify="right")
        for name, value in record["metrics"].items():
            table.add_row(name, f"{value:.4f}")
        console.print(table)
    console.print(f"wrote metrics.json, predictions.csv{', confusion.csv' if record['metrics'] else ''} "
                  f"and classes.csv to {out_dir}")
