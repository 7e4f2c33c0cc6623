"""One epoch of training and one pass of validation: the part of `trainlab train` that runs on every step.
`train.py` calls these once per epoch; everything they need comes in the `Run` that `build.py` assembled."""

from __future__ import annotations

import itertools
import logging
import time

import torch
import torch.nn.functional as F

from trainlab.core.columns import COLUMNS, EMA_COLUMNS
from trainlab.core.progress import EpochProgress
from trainlab.core.runtime import peak_memory_mb
from trainlab.engine.build import Run
from trainlab.engine.interrupt import StopRequest
from trainlab.engine.step import Stepper, forward_split, train_step
from trainlab.metrics import ClassificationMetrics
from trainlab.record.recorder import RunRecorder

log = logging.getLogger(__name__)


class EpochTally:
    """Running sums of one training epoch, kept on the device so no step waits for the host."""

    def __init__(self, device: torch.device, epoch: int, step: int):
        self.grad_sum = torch.zeros((), device=device)   # over the steps the optimizer took (fp16 skips some)
        self.grad_max = torch.zeros((), device=device)
        self.skipped = torch.zeros((), dtype=torch.int64, device=device)  # fp16 steps the GradScaler skipped
        self.correct = torch.zeros((), device=device)                          # for the progress bar
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite step
        self.batches, self.seen, self.elapsed = 0, 0, 0.0
        self.lr_sum = 0.0         # the lr of each optimizer step, summed: the `lr` column is their mean
        self.optimizer_steps = 0  # this epoch's (batches / accumulate_grad_batches)
        self.compile_s = 0.0      # the first compiled step's time: left out of throughput/train_ips
        # Where the run is: not part of the state below (a checkpoint stores them once, for every rank).
        self.epoch, self.step = epoch, step

    def state_dict(self) -> dict:
        return {"grad_sum": self.grad_sum, "grad_max": self.grad_max, "skipped": self.skipped,
                "correct": self.correct, "first_bad": self.first_bad, "batches": self.batches, "seen": self.seen,
                "elapsed": self.elapsed, "lr_sum": self.lr_sum, "optimizer_steps": self.optimizer_steps,
                "compile_s": self.compile_s}

    def load_state_dict(self, state: dict) -> None:
        for key in ("grad_sum", "grad_max", "correct", "first_bad"):
            getattr(self, key).copy_(state[key])
        self.skipped.copy_(state.get("skipped", torch.zeros((), dtype=torch.int64)))
        self.batches, self.seen, self.elapsed = state["batches"], state["seen"], state["elapsed"]
        self.optimizer_steps = state.get("optimizer_steps", state["batches"])  # older checkpoints: one per batch
        # Older checkpoints kept the epoch's first lr: taken as the lr of the steps done so far.
        self.lr_sum = state["lr_sum"] if "lr_sum" in state else state["lr"] * self.optimizer_steps
        self.compile_s = state.get("compile_s", 0.0)


def train_epoch(run: Run, tally: EpochTally, generator: torch.Generator, recorder: RunRecorder,
                stop: StopRequest, log_every: int) -> None:
    """Train until the epoch ends, a non-finite loss shows up (checked every log interval) or a stop is
    requested; the tally says how far it got (batches, samples, the global step). A step takes `s.accumulate`
    batches (the epoch's remainder makes a shorter last one), and a stop waits for the step to complete, so a
    checkpoint never holds half-accumulated gradients."""
    s, metrics, n_batches = run.stepper, run.train_metrics, run.n_train
    s.model.train()
    batches = iter(run.train_loader)  # after a mid-epoch resume the sampler starts at tally.batches
    start = time.perf_counter()
    with EpochProgress(f"epoch {tally.epoch} train", n_batches) as progress:
        while tally.batches < n_batches and not s.group.any(stop.requested):  # every rank at the same step
            size = min(s.accumulate, n_batches - tally.batches)
            tally.lr_sum += s.schedule.lr  # the lr this step takes (a float on the host: no sync)
            result = train_step(s, itertools.islice(batches, size), size, generator)
            loss, norm = result.loss, result.norm
            for logits, target, batch_loss in result.scored:
                metrics.update(logits, target, batch_loss)
                tally.correct += (logits.argmax(1) == target).sum()
                tally.batches, tally.seen = tally.batches + 1, tally.seen + target.shape[0]
            tally.step += 1
            step = tally.step
            tally.optimizer_steps += 1
            if s.scaler.is_enabled():
                # fp16's scaler skips a step whose gradients overflowed (by design, ~1 in 2,000): it is counted,
                # not averaged into the gradient norms, and only a non-finite loss is a failure.
                skipped = ~torch.isfinite(norm)
                tally.skipped += skipped
                norm = torch.where(skipped, 0.0, norm)
                bad = ~torch.isfinite(loss.detach())
            else:
                bad = ~torch.isfinite(loss.detach() + norm)
            tally.first_bad = torch.where(bad & (tally.first_bad < 0), step, tally.first_bad)
            tally.grad_sum += norm
            torch.maximum(tally.grad_max, norm, out=tally.grad_max)
            if s.runtime.compile and step == 1:  # the first step of a compiled model is mostly compilation
                loss.item()  # wait for it (GPUs run ahead)
                tally.compile_s = time.perf_counter() - start
                log.info("torch.compile: the first step took %.1f s (compilation included; left out of "
                         "throughput/train_ips, not of time/train_s)", tally.compile_s)
            if step % log_every == 0:
                # The only host sync inside the epoch: once per log interval. The loss is the ranks' mean.
                value, acc, first_bad = torch.stack([s.group.mean(loss.detach().float()),
                                                     tally.correct.float() / tally.seen,
                                                     s.group.max(tally.first_bad.float())]).tolist()
                recorder.log_step(step, value)
                speed = tally.seen / (tally.elapsed + time.perf_counter() - start)
                progress.update(tally.batches, f"loss {value:.4f}  acc {acc:.3f}  {speed:.0f} img/s")
                if first_bad >= 0:
                    break
    tally.elapsed += time.perf_counter() - start


def validate(s: Stepper, loader, metrics: ClassificationMetrics, n_batches: int,
             model: torch.nn.Module | None = None) -> dict:
    """Metrics of one pass over `loader` (every rank validates its share of rank 0's model). `model`: another
    set of weights to validate (the EMA's) instead of the trained ones."""
    forward = s.forward if model is None else model
    model = s.model if model is None else model
    model.eval()
    s.group.sync_buffers(model)  # every rank validates rank 0's model: the one the checkpoint holds
    metrics.reset()
    start = time.perf_counter()
    for logits, target in forward_split(forward, loader, s.augment, s.runtime, limit=n_batches):
        # Plain cross-entropy whatever the training loss (label smoothing, another criterion): comparable across
        # runs, and what early stopping, the plateau schedule and the best checkpoint watch.
        metrics.update(logits, target, F.cross_entropy(logits.float(), target))
    values, confusion = metrics.compute()
    return values | {"time/val_s": time.perf_counter() - start, "_confusion": confusion}


def epoch_row(run: Run, tally: EpochTally) -> tuple[dict, dict[str, torch.Tensor]]:
    """Validate, then put the epoch's numbers together in the public column order."""
    group = run.stepper.group
    train_values, train_confusion = run.train_metrics.compute()  # both compute()s sum over the ranks
    val_values = validate(run.stepper, run.val_loader, run.val_metrics, run.n_val)
    if run.stepper.ema is not None:  # its own pass, its own val_ema/* columns (its time is not val's)
        ema_values = validate(run.stepper, run.val_loader, run.ema_metrics, run.n_val, run.stepper.ema.module)
        val_values |= {k: v for k, v in ema_values.items() if k.startswith("val_ema/")}
    images_per_s = group.sum(tally.seen) / max(tally.elapsed - tally.compile_s, 1e-9)
    steps = max(tally.optimizer_steps, 1)
    skipped = int(tally.skipped.item())  # the same steps on every rank: their gradients are all-reduced
    values = {"epoch": tally.epoch, "step": tally.step, **train_values, **val_values, "lr": tally.lr_sum / steps,
              "grad_norm": (tally.grad_sum / max(tally.optimizer_steps - skipped, 1)).item(),
              "grad_norm_max": tally.grad_max.item(), "skipped_steps": skipped,
              "time/train_s": tally.elapsed, "throughput/train_ips": images_per_s,
              "throughput/train_ips_per_device": images_per_s / group.world_size, "memory/peak_mb": peak_memory_mb()}
    confusions = {"train": train_confusion, "val": values.pop("_confusion")}
    # Rank 0's row (its timings), so every rank takes the same best-epoch and stopping decisions.
    columns = COLUMNS + (EMA_COLUMNS if run.stepper.ema is not None else [])
    return group.broadcast({k: values[k] for k in columns}), confusions


def epoch_line(row: dict, epochs: int, improved: bool) -> str:
    keys = ["train/loss", "train/acc1", "val/loss", "val/acc1", "val/acc5", "val/f1"]
    keys += [k for k in ("val_ema/acc1",) if k in row]
    parts = [f"epoch {row['epoch']}/{epochs}"] + [f"{k} {row[k]:.4f}" for k in keys]
    parts += [f"lr {row['lr']:.3g}", f"{row['throughput/train_ips']:.0f} img/s",
              f"{row['time/train_s'] + row['time/val_s']:.1f}s"]
    return "  ".join(parts) + ("  *best" if improved else "")
