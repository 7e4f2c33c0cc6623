"""`trainlab train`: build data, model, optimizer, schedule and metrics from the config, then for each
epoch train, validate, record, checkpoint, and stop early on a non-finite loss."""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import trainlab
from trainlab.build import build, build_partial, take
from trainlab.checkpoint import save_checkpoint
from trainlab.config import load_settings, settings_dict
from trainlab.errors import ConfigError
from trainlab.metrics import ClassificationMetrics
from trainlab.models import count_parameters, l1_norm
from trainlab.optim import LRSchedule, build_optimizer
from trainlab.progress import EpochProgress
from trainlab.record import COLUMNS, RunRecorder
from trainlab.runtime import Runtime, peak_memory_mb, resolve_runtime, seed_everything

log = logging.getLogger("trainlab")


@dataclass
class Stepper:
    """What one optimizer step needs, built once so the epoch loop below stays short."""
    model: torch.nn.Module
    forward: torch.nn.Module          # the model, or its torch.compile'd wrapper
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    criterion: torch.nn.Module
    augment: object
    scaler: torch.amp.GradScaler
    runtime: Runtime
    l1: float
    grad_clip: Optional[float]


def _batch(images: torch.Tensor, target: torch.Tensor, runtime: Runtime):
    device = runtime.torch_device
    return images.to(device, non_blocking=True), target.to(device, non_blocking=True)


def _as_input(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def train_epoch(s: Stepper, loader, metrics: ClassificationMetrics, recorder: RunRecorder, epoch: int,
                step: int, n_batches: int, log_every: int, generator: torch.Generator) -> tuple[dict, int]:
    s.model.train()
    metrics.reset()
    params = [p for p in s.model.parameters() if p.requires_grad]
    grad_sum = torch.zeros((), device=s.runtime.torch_device)
    grad_max = torch.zeros((), device=s.runtime.torch_device)
    correct = torch.zeros((), device=s.runtime.torch_device)  # running top-1 for the progress bar only
    seen, done, start = 0, 0, time.perf_counter()
    with EpochProgress(f"epoch {epoch} train", n_batches) as progress:
        for i, (images, target) in enumerate(loader):
            if i >= n_batches:
                break
            images, target = _batch(images, target, s.runtime)
            x = _as_input(s.augment.train(images, generator), s.runtime)
            with s.runtime.autocast():
                logits = s.forward(x)
                loss = s.criterion(logits, target)
            objective = loss + s.l1 * l1_norm(s.model) if s.l1 else loss
            s.optimizer.zero_grad(set_to_none=True)
            s.scaler.scale(objective).backward()
            s.scaler.unscale_(s.optimizer)
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if s.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(params, s.grad_clip, norm)
            s.scaler.step(s.optimizer)
            s.scaler.update()
            s.schedule.after_step()
            grad_sum += norm
            torch.maximum(grad_max, norm, out=grad_max)
            metrics.update(logits, target, loss)
            correct += (logits.argmax(1) == target).sum()
            step, done, seen = step + 1, done + 1, seen + target.shape[0]
            if step % log_every == 0:
                # The only host sync inside the epoch: once per log interval.
                value, acc = torch.stack([loss.detach().float(), correct.float() / seen]).tolist()
                recorder.log_step(step, value)
                progress.update(i + 1, f"loss {value:.4f}  acc {acc:.3f}  {seen / (time.perf_counter() - start):.0f} img/s")
                if not math.isfinite(value):
                    break
    elapsed = time.perf_counter() - start
    values, confusion = metrics.compute()
    values.update({"grad_norm": (grad_sum / max(done, 1)).item(), "grad_norm_max": grad_max.item(),
                   "time/train_s": elapsed, "throughput/train_ips": seen / max(elapsed, 1e-9)})
    return values | {"_confusion": confusion}, step


@torch.no_grad()
def validate(s: Stepper, loader, metrics: ClassificationMetrics, n_batches: int) -> dict:
    s.model.eval()
    metrics.reset()
    start = time.perf_counter()
    for i, (images, target) in enumerate(loader):
        if i >= n_batches:
            break
        images, target = _batch(images, target, s.runtime)
        with s.runtime.autocast():
            logits = s.forward(_as_input(s.augment.normalize(images), s.runtime))
            loss = s.criterion(logits, target)
        metrics.update(logits, target, loss)
    values, confusion = metrics.compute()
    return values | {"time/val_s": time.perf_counter() - start, "_confusion": confusion}


def epoch_line(row: dict, epochs: int, improved: bool) -> str:
    keys = ["train/loss", "train/acc1", "val/loss", "val/acc1", "val/acc5", "val/f1"]
    parts = [f"epoch {row['epoch']}/{epochs}"] + [f"{k} {row[k]:.4f}" for k in keys]
    parts += [f"lr {row['lr']:.3g}", f"{row['throughput/train_ips']:.0f} img/s",
              f"{row['time/train_s'] + row['time/val_s']:.1f}s"]
    return "  ".join(parts) + ("  *best" if improved else "")


def _epoch_seed(seed: int, epoch: int) -> int:
    # Every epoch's randomness (shuffle, augmentation, dropout) depends only on (seed, epoch), so a run
    # restarted at an epoch boundary repeats exactly.
    return seed * 1_000_003 + epoch


def _checkpoint(row: dict, stepper: Stepper, cfg: DictConfig, classes: list[str], names: list[str],
                best_score: Optional[float], history: list[dict]) -> dict:
    np_state = np.random.get_state()
    return {
        "epoch": row["epoch"], "step": row["step"], "best_score": best_score,
        "model": stepper.model.state_dict(), "optimizer": stepper.optimizer.state_dict(),
        "scheduler": stepper.schedule.state_dict(), "scaler": stepper.scaler.state_dict(),
        "classes": classes, "class_names": names, "config": OmegaConf.to_container(cfg, resolve=True),
        "history": history, "metrics": {k: v for k, v in row.items() if not k.startswith("_")},
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])}},
    }


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Train as configured, writing the whole record into `run_dir`. Returns the last epoch's metrics."""
    settings = load_settings(cfg)
    trainer = settings.trainer
    monitor, mode = settings.checkpoint.monitor, settings.checkpoint.mode
    if monitor not in COLUMNS:
        raise ConfigError(f"checkpoint.monitor={monitor} is not a recorded metric (choose from {', '.join(COLUMNS[2:])})")
    started = time.perf_counter()
    runtime = resolve_runtime(settings.device.type, trainer.precision, trainer.channels_last, trainer.threads,
                              trainer.compile)
    seed_everything(settings.seed)

    data = build(cfg.dataset, "dataset")
    data.setup(("train", "val"))
    model = build_partial(cfg.model, "model", num_classes=data.num_classes)
    model = model.to(runtime.torch_device, memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    opt_cfg, (l1,) = take(cfg.optimizer, "l1", defaults={"l1": 0.0})
    optimizer = build_optimizer(build(opt_cfg, "optimizer"), model.parameters())
    train_loader = data.loader("train", seed=settings.seed, pin_memory=runtime.device != "cpu")
    val_loader = data.loader("val", pin_memory=runtime.device != "cpu")
    n_train = min(len(train_loader), trainer.limit_train_batches or len(train_loader))
    n_val = min(len(val_loader), trainer.limit_val_batches or len(val_loader))
    sched_cfg, (interval, warmup, plateau_metric) = take(cfg.scheduler, "interval", "warmup_epochs", "monitor",
                                                         defaults={"interval": "epoch", "warmup_epochs": 0})
    schedule = LRSchedule(build(sched_cfg, "scheduler"), optimizer, interval=interval, warmup_epochs=warmup,
                          epochs=trainer.epochs, steps_per_epoch=n_train, monitor=plateau_metric)
    train_metrics = build_partial(cfg.metrics, "metrics", num_classes=data.num_classes, split="train",
                                  with_auroc=False, device=runtime.torch_device)
    val_metrics = build_partial(cfg.metrics, "metrics", num_classes=data.num_classes, split="val",
                                with_auroc=True, device=runtime.torch_device)
    stepper = Stepper(model, torch.compile(model) if runtime.compile else model, optimizer, schedule,
                      build(cfg.loss, "loss"), build(cfg.augment, "augment", mean=data.mean, std=data.std),
                      runtime.grad_scaler(), runtime, float(l1), trainer.grad_clip)

    recorder = RunRecorder(run_dir, data.classes, data.class_names, trainer.histogram_every_n_epochs)
    recorder.write_json("run.json", {
        "trainlab_version": trainlab.__version__, "torch_version": str(torch.__version__), "runtime": runtime.to_dict(),
        "settings": settings_dict(settings), "data": data.describe(), "augment": stepper.augment.describe(),
        "model": {"parameters": count_parameters(model)}, "steps_per_epoch": n_train, "val_batches": n_val,
        "config": OmegaConf.to_container(cfg, resolve=True)})
    example = stepper.augment.normalize(data.splits["val"].images[:2]).to(runtime.torch_device)
    model.eval()
    recorder.log_graph(model, _as_input(example, runtime))
    log.info("model: %s, %s parameters; %d train batches of %d per epoch; writing to %s", type(model).__name__,
             f"{count_parameters(model):,}", n_train, data.batch_size, run_dir)

    best_score, best_epoch, step, row, status = None, None, 0, {}, "completed"
    for epoch in range(1, trainer.epochs + 1):
        torch.manual_seed(_epoch_seed(settings.seed, epoch))
        train_loader.sampler.set_epoch(epoch)
        generator = torch.Generator(device=runtime.torch_device).manual_seed(_epoch_seed(settings.seed, epoch))
        lr = schedule.lr
        train_values, step = train_epoch(stepper, train_loader, train_metrics, recorder, epoch, step, n_train,
                                         trainer.log_every_n_steps, generator)
        val_values = validate(stepper, val_loader, val_metrics, n_val)
        confusions = {"train": train_values.pop("_confusion"), "val": val_values.pop("_confusion")}
        row = {"epoch": epoch, "step": step, **train_values, **val_values, "lr": lr, "memory/peak_mb": peak_memory_mb()}
        row = {k: row[k] for k in COLUMNS}
        schedule.after_epoch(row)
        score = row[monitor]
        improved = math.isfinite(score) and (best_score is None or (score > best_score if mode == "max" else score < best_score))
        if improved:
            best_score, best_epoch = score, epoch
        recorder.log_epoch(row, confusions, model)
        log.info(epoch_line(row, trainer.epochs, improved))
        if not math.isfinite(row["train/loss"]):
            status = "nan"
            log.error("stopped at epoch %d (step %d): the training loss is not finite; lower optimizer.lr, set "
                      "trainer.grad_clip, or use trainer.precision=bf16-mixed instead of 16-mixed", epoch, step)
            break
        payload = _checkpoint(row, stepper, cfg, data.classes, data.class_names, best_score, recorder.history)
        save_checkpoint(run_dir / "checkpoints" / "last.ckpt", payload)
        if improved:
            save_checkpoint(run_dir / "checkpoints" / "best.ckpt", payload)

    history = recorder.history
    best_row = next((r for r in history if r["epoch"] == best_epoch), None)
    summary = {
        "status": status, "stop_reason": {"completed": f"reached trainer.epochs={trainer.epochs}",
                                          "nan": "non-finite training loss"}[status],
        "epochs_run": len(history), "monitor": monitor, "mode": mode, "best_epoch": best_epoch,
        "best": best_row, "final": history[-1] if history else {}, "total_time_s": time.perf_counter() - started,
        "runtime": runtime.to_dict(), "run_dir": str(run_dir),
    }
    recorder.finish(summary, _hparams(cfg, runtime))
    log.info("done: %s; best %s %.4f at epoch %s; outputs in %s", summary["stop_reason"], monitor,
             best_score if best_score is not None else float("nan"), best_epoch, run_dir)
    return {k: v for k, v in row.items()}


def _hparams(cfg: DictConfig, runtime: Runtime) -> dict:
    """The flattened config as TensorBoard hparams (scalars and strings only)."""
    import pandas as pd

    flat = pd.json_normalize(OmegaConf.to_container(cfg, resolve=True), sep=".").iloc[0].to_dict()
    flat.update({"runtime.precision": runtime.precision, "runtime.channels_last": runtime.channels_last})
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}
