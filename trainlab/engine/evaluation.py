"""Evaluating a checkpoint: rebuild its model and data transforms from the config stored in it, predict one split,
and write metrics.json, predictions.csv, confusion.csv and classes.csv (`trainlab evaluate`, and `trainlab compare`
for a checkpoint it has no evaluation of yet).

Metric names are the training ones (`val/acc1`, ...; `train/...` for split=train), top-k by `metrics.top_k`. The
unlabelled test split gets predictions only.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from trainlab.core.config import load_settings
from trainlab.core.errors import ConfigError
from trainlab.core.fs import atomic_write_text
from trainlab.core.runtime import seed_everything
from trainlab.engine.build import build, build_partial
from trainlab.engine.ready import ready_model, stored_run, trained_runtime, which_weights
from trainlab.record.recorder import class_labels, write_classes, write_confusion
from trainlab.record.stored_run import check_classes

SPLITS = ("val", "train", "test")
OWN_KEYS = ("ckpt", "split", "weights")  # evaluate's own keys; every other key=value applies to the stored config
log = logging.getLogger(__name__)


def evaluate(path: Path, split: str, weights: str, overrides: list[str], out_dir: Path,
             ckpt: dict | None = None) -> dict:
    """Evaluate the checkpoint (or export) at `path` on `split` into `out_dir`; `overrides` are the command line's
    key=value pairs, applied to the config stored in the checkpoint (e.g. another dataset.root). `ckpt`: the
    checkpoint when this process has read it already. Returns what metrics.json holds."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)} (got {split!r})")
    ckpt, run_cfg, changed = stored_run(path, overrides, OWN_KEYS, ckpt=ckpt)
    seed_everything(load_settings(run_cfg).seed)
    data = build(run_cfg.dataset, "dataset")
    data.setup((split,))
    check_classes(ckpt["classes"], data.classes, str(path))
    weights = which_weights(ckpt, weights)
    ready = ready_model(ckpt, run_cfg, trained_runtime(ckpt, run_cfg, "evaluate"), weights, path)
    start = time.perf_counter()
    logits, labels = ready.logits(data.loader(split, pin_memory=ready.runtime.device != "cpu", train=False))
    seconds = time.perf_counter() - start
    labelled = data.splits[split].labels is not None
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = _metrics(run_cfg, logits, labels, split, data.num_classes, out_dir, data) if labelled else {}
    predictions = _predictions(run_cfg, logits, labels if labelled else None, data.splits[split].paths,
                               data.class_names)
    atomic_write_text(out_dir / "predictions.csv", predictions.to_csv(index=False))
    write_classes(out_dir / "classes.csv", data.classes, data.class_names)
    record = {"checkpoint": str(path), "epoch": ckpt["epoch"], "split": split, "weights": weights,
              "images": len(predictions), "seconds": seconds, "images_per_s": len(predictions) / max(seconds, 1e-9),
              "runtime": ready.runtime.to_dict(), "changed": changed, "metrics": metrics}
    atomic_write_text(out_dir / "metrics.json", json.dumps(record, indent=2) + "\n")
    _print_table(record, out_dir)
    return record


def _metrics(cfg: DictConfig, logits, labels, split, num_classes, out_dir: Path, data) -> dict:
    metrics = build_partial(cfg.metrics, "metrics", num_classes=num_classes, split=split, with_auroc=True)
    for chunk_logits, chunk_labels in zip(logits.split(4096), labels.split(4096)):  # val/loss: as in training
        metrics.update(chunk_logits, chunk_labels, F.cross_entropy(chunk_logits.float(), chunk_labels))
    values, confusion = metrics.compute()
    write_confusion(out_dir / "confusion.csv", confusion, class_labels(data.classes, data.class_names))
    return values


def _predictions(cfg: DictConfig, logits, labels: torch.Tensor | None, paths, names) -> pd.DataFrame:
    probs = logits.softmax(dim=1)
    k = min(int(cfg.metrics.top_k), logits.shape[1])  # the k of val/acc5, so the column and the metric agree
    top = probs.topk(k, dim=1)
    pred = top.indices[:, 0]
    frame = pd.DataFrame({"path": paths})
    if labels is not None:
        per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
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
