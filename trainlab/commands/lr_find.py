"""`trainlab lr-find`: the learning-rate range test (L. Smith, 2015; fastai's and Lightning's `lr_find`).

The run's own data, model, augmentation, loss and optimizer are built as `trainlab train` builds them, and each
step is train's own (engine.step: L1 term, clipping, EMA); the learning rate grows geometrically from `min_lr` to
`max_lr`, one training batch per step, and the loss is
smoothed with a bias-corrected moving average. The test stops when the smoothed loss exceeds `stop_factor`
times its minimum. The suggestion is the learning rate where the smoothed loss falls fastest (the steepest
negative slope against log(lr)), Lightning's rule; the model is thrown away afterwards."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from trainlab.core.config import load_settings
from trainlab.core.errors import ConfigError
from trainlab.core.fs import atomic_write_text
from trainlab.core.progress import EpochProgress
from trainlab.core.runtime import resolve_runtime, seed_everything
from trainlab.engine.build import build_run
from trainlab.engine.step import train_step

log = logging.getLogger(__name__)


def suggest(lrs: np.ndarray, smoothed: np.ndarray, skip: float = 0.1) -> int | None:
    """Index of the steepest descent of the smoothed loss against log(lr) before its minimum, leaving out the first
    `skip` of the points (the average is still settling there); None when the curve has too few points to have a
    slope. Past the minimum the loss has diverged: a fall there (a diverged model bouncing back) is no suggestion."""
    start, lowest = int(len(lrs) * skip), int(np.argmin(smoothed))
    end = max(lowest + 1, start + 3)
    if min(end, len(lrs)) - start < 3:
        return None
    slope = np.gradient(smoothed[start:end], np.log(lrs[start:end]))
    return start + int(np.argmin(slope))


def lr_find_command(cfg: DictConfig, out_dir: Path) -> dict:
    settings = load_settings(cfg)
    options = cfg.lr_find
    min_lr, max_lr, steps = float(options.min_lr), float(options.max_lr), int(options.num_steps)
    beta, stop_factor = float(options.smoothing), float(options.stop_factor)
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"lr_find.min_lr must be > 0 and below lr_find.max_lr (got {min_lr}, {max_lr})")
    if steps < 5:
        raise ConfigError(f"lr_find.num_steps must be >= 5 (got {steps})")
    if not 0 <= beta < 1 or stop_factor <= 1:
        raise ConfigError("lr_find.smoothing must be in [0, 1) and lr_find.stop_factor > 1")
    if settings.device.count > 1:
        log.info("lr-find runs in one process: device.count=%d applies to training only", settings.device.count)
    trainer = settings.trainer
    planned = resolve_runtime(settings.device.type, trainer.precision, trainer.channels_last, trainer.threads, False,
                              autotune=trainer.autotune)
    seed_everything(settings.seed)
    run = build_run(cfg, settings, planned)
    s = run.stepper
    runtime = s.runtime  # as built: autotune's choices settled
    if s.accumulate > 1:
        log.info("lr-find steps once per batch: trainer.accumulate_grad_batches=%d is not used here", s.accumulate)
    s.model.train()
    lrs = min_lr * (max_lr / min_lr) ** (np.arange(steps) / (steps - 1))
    generator = torch.Generator(device=runtime.torch_device).manual_seed(settings.seed)
    rows, average, best, epoch = [], 0.0, math.inf, 0
    batches = iter(())
    stopped = "reached lr_find.max_lr"
    with EpochProgress("lr-find", steps) as progress:
        for i, lr in enumerate(lrs):
            images_target = next(batches, None)
            if images_target is None:  # a data set smaller than the test: go round again, reshuffled
                epoch += 1
                run.train_loader.sampler.set_epoch(epoch)
                batches = iter(run.train_loader)
                images_target = next(batches)
            loss = train_step(s, [images_target], 1, generator, lr=float(lr)).loss  # as `train` steps, at this lr
            value = float(loss.detach())  # one host sync per step: the test needs every value
            average = beta * average + (1 - beta) * value
            smoothed = average / (1 - beta ** (i + 1))
            rows.append({"step": i + 1, "lr": float(lr), "loss": value, "smoothed_loss": smoothed})
            progress.update(i + 1, f"lr {lr:.2e}  loss {smoothed:.4f}")
            if not math.isfinite(smoothed) or smoothed > stop_factor * best:
                stopped = f"the smoothed loss exceeded {stop_factor:g}x its minimum at lr {lr:.3g}"
                break
            best = min(best, smoothed)
    table = pd.DataFrame(rows)
    finite = table[np.isfinite(table["smoothed_loss"])]
    pick = suggest(finite["lr"].to_numpy(), finite["smoothed_loss"].to_numpy())
    suggested = float(finite["lr"].iloc[pick]) if pick is not None else None
    lowest = float(finite["lr"].iloc[int(finite["smoothed_loss"].to_numpy().argmin())]) if len(finite) else None
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "lr_find.csv", table.to_csv(index=False))
    record = {"suggested_lr": suggested, "min_loss_lr": lowest, "steps": len(table), "stopped": stopped,
              "rule": "steepest descent of the smoothed loss against log(lr) before its minimum, first 10% of the "
                      "points left out",
              "min_lr": min_lr, "max_lr": max_lr, "smoothing": beta, "stop_factor": stop_factor,
              "optimizer": OmegaConf.to_container(cfg.optimizer, resolve=True), "runtime": runtime.to_dict(),
              "config": OmegaConf.to_container(cfg, resolve=True)}
    atomic_write_text(out_dir / "lr_find.json", json.dumps(record, indent=2, default=str) + "\n")
    _plot(table, suggested, out_dir / "lr_find.png")
    log.info("lr-find: %d steps (%s); lowest smoothed loss at lr %s", len(table), stopped,
             f"{lowest:.3g}" if lowest else "-")
    if suggested is None:
        print(f"lr-find: too few steps before the loss diverged to suggest a learning rate; lower lr_find.min_lr. "
              f"Curve: {out_dir / 'lr_find.png'}")
    else:
        print(f"lr-find: suggested optimizer.lr={suggested:.3g} (steepest descent of the loss; the lowest loss was at "
              f"{lowest:.3g})\n  curve: {out_dir / 'lr_find.png'}   table: {out_dir / 'lr_find.csv'}")
    return record


def _plot(table: pd.DataFrame, suggested: float | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(table["lr"], table["loss"], color="0.75", linewidth=1, label="loss")
    ax.plot(table["lr"], table["smoothed_loss"], color="C0", label="smoothed loss")
    if suggested is not None:
        ax.axvline(suggested, color="C3", linestyle="--", label=f"suggested lr {suggested:.3g}")
    finite = table["smoothed_loss"][np.isfinite(table["smoothed_loss"])]
    if len(finite):  # the divergence at the end would squash the interesting part of the curve
        ax.set_ylim(top=min(float(finite.max()), 2.5 * float(finite.iloc[0])) * 1.05)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: dict) -> dict:
    return lr_find_command(cfg, run_dir)
