"""`trainlab train`: build data, model, optimizer, schedule and metrics from the config, then for each
epoch train, validate, record, checkpoint, and stop early when asked (early stopping, a non-finite
loss, SIGINT/SIGTERM). A run resumed from a checkpoint continues exactly where it stopped."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Optional

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

import trainlab
from trainlab.build import Run, Stepper, build_run
from trainlab.checkpoint import Checkpointer, capture_rng, find_checkpoint, load_checkpoint, restore_rng
from trainlab.columns import COLUMNS
from trainlab.config import Settings, load_settings, settings_dict
from trainlab.diagnostics import as_dicts, diagnose
from trainlab.early_stopping import BestTracker, EarlyStopping
from trainlab import distributed
from trainlab.distributed import SINGLE, Group
from trainlab.errors import CheckpointError, RunStopped
from trainlab.interrupt import StopRequest
from trainlab.metrics import ClassificationMetrics
from trainlab.models import count_parameters, l1_norm
from trainlab.progress import EpochProgress
from trainlab.record import RunRecorder
from trainlab.resume import check_classes, stored_run
from trainlab.runtime import Runtime, peak_memory_mb, resolve_runtime, seed_everything

log = logging.getLogger("trainlab")


class EpochTally:
    """Running sums of one training epoch, kept on the device so no step waits for the host."""

    def __init__(self, device: torch.device, lr: float):
        self.grad_sum = torch.zeros((), device=device)
        self.grad_max = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device)                          # for the progress bar
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)  # first non-finite step
        self.batches, self.seen, self.elapsed, self.lr = 0, 0, 0.0, lr

    def state_dict(self) -> dict:
        return {"grad_sum": self.grad_sum, "grad_max": self.grad_max, "correct": self.correct,
                "first_bad": self.first_bad, "batches": self.batches, "seen": self.seen,
                "elapsed": self.elapsed, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        for key in ("grad_sum", "grad_max", "correct", "first_bad"):
            getattr(self, key).copy_(state[key])
        self.batches, self.seen, self.elapsed, self.lr = state["batches"], state["seen"], state["elapsed"], state["lr"]


def _to_device(images: torch.Tensor, target: torch.Tensor, runtime: Runtime):
    device = runtime.torch_device
    return images.to(device, non_blocking=True), target.to(device, non_blocking=True)


def _as_input(x: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if runtime.channels_last else x


def train_epoch(s: Stepper, loader, metrics: ClassificationMetrics, tally: EpochTally, recorder: RunRecorder,
                epoch: int, step: int, n_batches: int, log_every: int, generator: torch.Generator,
                stop: StopRequest) -> int:
    """Train until the epoch ends, a non-finite loss shows up (checked every log interval) or a stop is
    requested; the tally says how far it got. Returns the global step."""
    s.model.train()
    params = [p for p in s.model.parameters() if p.requires_grad]
    start = time.perf_counter()
    with EpochProgress(f"epoch {epoch} train", n_batches) as progress:
        for images, target in loader:  # after a mid-epoch resume the sampler starts at tally.batches
            if tally.batches >= n_batches or s.group.any(stop.requested):  # every rank leaves at the same step
                break
            images, target = _to_device(images, target, s.runtime)
            x = _as_input(s.augment.train(images, generator), s.runtime)
            with s.runtime.autocast():
                logits = s.train_forward(x)
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
            step += 1
            # fp16's scaler skips steps with inf gradients by design; otherwise a bad gradient is a failure too.
            bad = ~torch.isfinite(loss.detach()) if s.scaler.is_enabled() else ~torch.isfinite(loss.detach() + norm)
            tally.first_bad = torch.where(bad & (tally.first_bad < 0), step, tally.first_bad)
            tally.grad_sum += norm
            torch.maximum(tally.grad_max, norm, out=tally.grad_max)
            tally.correct += (logits.argmax(1) == target).sum()
            tally.batches, tally.seen = tally.batches + 1, tally.seen + target.shape[0]
            if s.runtime.compile and step == 1:  # the first step of a compiled model is mostly compilation
                loss.item()  # wait for it (GPUs run ahead)
                log.info("torch.compile: the first step took %.1fs (compilation included)", time.perf_counter() - start)
            metrics.update(logits, target, loss)
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
    return step


@torch.no_grad()
def validate(s: Stepper, loader, metrics: ClassificationMetrics, n_batches: int) -> dict:
    s.model.eval()
    s.group.sync_buffers(s.model)  # every rank validates rank 0's model: the one the checkpoint holds
    metrics.reset()
    start = time.perf_counter()
    for i, (images, target) in enumerate(loader):
        if i >= n_batches:
            break
        images, target = _to_device(images, target, s.runtime)
        with s.runtime.autocast():
            logits = s.forward(_as_input(s.augment.normalize(images), s.runtime))
            loss = s.criterion(logits, target)
        metrics.update(logits, target, loss)
    values, confusion = metrics.compute()
    return values | {"time/val_s": time.perf_counter() - start, "_confusion": confusion}


def _epoch_row(run: Run, tally: EpochTally, epoch: int, step: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """Validate, then put the epoch's numbers together in the public column order."""
    group = run.stepper.group
    train_values, train_confusion = run.train_metrics.compute()  # both compute()s sum over the ranks
    val_values = validate(run.stepper, run.val_loader, run.val_metrics, run.n_val)
    images_per_s = group.sum(tally.seen) / max(tally.elapsed, 1e-9)
    values = {"epoch": epoch, "step": step, **train_values, **val_values, "lr": tally.lr,
              "grad_norm": (tally.grad_sum / max(tally.batches, 1)).item(), "grad_norm_max": tally.grad_max.item(),
              "time/train_s": tally.elapsed, "throughput/train_ips": images_per_s,
              "throughput/train_ips_per_device": images_per_s / group.world_size, "memory/peak_mb": peak_memory_mb()}
    confusions = {"train": train_confusion, "val": values.pop("_confusion")}
    # Rank 0's row (its timings), so every rank takes the same best-epoch and stopping decisions.
    return group.broadcast({k: values[k] for k in COLUMNS}), confusions


def epoch_line(row: dict, epochs: int, improved: bool) -> str:
    keys = ["train/loss", "train/acc1", "val/loss", "val/acc1", "val/acc5", "val/f1"]
    parts = [f"epoch {row['epoch']}/{epochs}"] + [f"{k} {row[k]:.4f}" for k in keys]
    parts += [f"lr {row['lr']:.3g}", f"{row['throughput/train_ips']:.0f} img/s",
              f"{row['time/train_s'] + row['time/val_s']:.1f}s"]
    return "  ".join(parts) + ("  *best" if improved else "")


def _epoch_seed(seed: int, epoch: int) -> int:
    # Every epoch's randomness (shuffle, augmentation, dropout) depends only on (seed, epoch), so a run
    # restarted at an epoch boundary repeats exactly; mid-epoch the generator states are checkpointed.
    return seed * 1_000_003 + epoch


def _checkpoint(cfg: DictConfig, run: Run, epoch: int, step: int, best: BestTracker, stopper: EarlyStopping,
                history: list[dict], elapsed: float) -> dict:
    s = run.stepper
    return {"choices": run.choices,
        "epoch": epoch, "step": step, "best_score": best.best, "best": best.state_dict(),
        "early_stopping": stopper.state_dict(), "model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
        "scheduler": s.schedule.state_dict(), "scaler": s.scaler.state_dict(), "rng": capture_rng(),
        "classes": run.data.classes, "class_names": run.data.class_names,
        "normalization": {"mean": list(run.data.mean), "std": list(run.data.std)},
        "config": OmegaConf.to_container(cfg, resolve=True), "history": history,
        "metrics": history[-1] if history else {}, "elapsed_s": elapsed,
    }


def _restore(resume: dict, run: Run, best: BestTracker, stopper: EarlyStopping) -> tuple[int, int]:
    """Load a checkpoint's training state; returns (first epoch to run, global step)."""
    s = run.stepper
    ranks = len(resume["position"]["ranks"]) if "position" in resume else s.group.world_size
    if ranks != s.group.world_size:
        raise CheckpointError(f"this checkpoint stopped in the middle of an epoch with {ranks} training "
                              f"process(es); resume it with device.count={ranks} (or resume=<run>/checkpoints/last.ckpt)")
    check_classes(resume["classes"], run.data.classes, "the checkpoint")
    s.model.load_state_dict(resume["model"])
    s.optimizer.load_state_dict(resume["optimizer"])
    s.schedule.load_state_dict(resume["scheduler"])
    s.scaler.load_state_dict(resume["scaler"])
    best.load_state_dict(resume["best"])
    stopper.load_state_dict(resume["early_stopping"])
    restore_rng(resume["rng"])
    where = f"epoch {resume['epoch'] + 1}, batch {resume['position']['ranks'][0]['tally']['batches']}" \
        if "position" in resume \
        else f"epoch {resume['epoch'] + 1}"
    log.info("resuming at %s (global step %d)", where, resume["step"])
    return resume["epoch"] + 1, resume["step"]


def _start_epoch(run: Run, epoch: int, seed: int, position: Optional[dict]) -> tuple[EpochTally, torch.Generator]:
    """Seed the epoch, or, for the epoch a mid-epoch checkpoint stopped in, restore where it was."""
    device, rank = run.stepper.runtime.torch_device, run.stepper.group.rank
    # Each rank augments (and drops out) its own samples with its own stream; rank 0's is a single process's.
    torch.manual_seed(_epoch_seed(seed, epoch) + 7919 * rank)
    generator = torch.Generator(device=device).manual_seed(_epoch_seed(seed, epoch) + 7919 * rank)
    tally = EpochTally(device, run.stepper.schedule.lr)
    run.train_metrics.reset()
    if position is not None and position["epoch"] == epoch:
        mine = position["ranks"][rank]
        tally.load_state_dict(mine["tally"])
        run.train_metrics.load_state_dict(mine["train_metrics"])
        generator.set_state(mine["generator"])
        restore_rng(mine["rng"])
    run.train_loader.sampler.set_epoch(epoch, start_batch=tally.batches)
    return tally, generator


def _record_start(recorder: RunRecorder, cfg: DictConfig, settings: Settings, run: Run,
                  resumed_from: Optional[str], changed: list[str]) -> None:
    info = recorder.read_json("run.json") if resumed_from else {}
    if resumed_from:
        info.setdefault("resumes", []).append({"time": datetime.now().isoformat(timespec="seconds"),
                                               "from": resumed_from, "changed": changed})
        log.info("resumed from %s%s", resumed_from, f"; changed: {', '.join(changed)}" if changed else "")
    model, group = run.stepper.model, run.stepper.group
    info.update({
        "trainlab_version": trainlab.__version__, "torch_version": str(torch.__version__),
        "runtime": run.stepper.runtime.to_dict(), "settings": settings_dict(settings), "data": run.data.describe(),
        "augment": run.stepper.augment.describe(), "model": {"parameters": count_parameters(model)},
        "distributed": group.describe() | {"batch_size_global": run.data.batch_size,
                                           "batch_size_per_process": run.data.batch_size // group.world_size},
        "steps_per_epoch": run.n_train, "val_batches": run.n_val, "config": OmegaConf.to_container(cfg, resolve=True)})
    recorder.write_json("run.json", info)
    if not resumed_from and recorder.active:  # the graph is the same on resume: write it once
        example = run.stepper.augment.normalize(run.data.splits["val"].images[:2]).to(run.stepper.runtime.torch_device)
        model.eval()
        recorder.log_graph(model, _as_input(example, run.stepper.runtime))
    group = run.stepper.group
    log.info("model: %s, %s parameters; %d train batches of %d per epoch; writing to %s", type(model).__name__,
             f"{count_parameters(model):,}", run.n_train, run.data.batch_size, recorder.run_dir)
    if group.world_size > 1:
        log.info("processes: %d on %d machine(s), %s backend, started by %s; dataset.batch_size=%d is the global "
                 "batch, %d per process", group.world_size, group.nodes, group.backend, group.launcher,
                 run.data.batch_size, run.data.batch_size // group.world_size)


OUTPUTS_ROOT = Path("outputs")  # where hydra.run.dir puts runs by default; resume=latest|DATE looks here


def train_command(cfg: DictConfig, run_dir: Path, overrides: list[str], choices: Optional[dict] = None) -> dict:
    """`trainlab train`: a new run, or with `resume=` the stored run continued in its own directory
    (the CLI already pointed Hydra's output directory there). `choices`: the config group options
    picked (Hydra's runtime.choices), stored with the checkpoints. With `device.count > 1` the training
    processes are started here, inside this (one) Hydra job, each with the resolved config."""
    resumed_from, changed = None, ()
    if cfg.get("resume"):
        path = find_checkpoint(str(cfg.resume), OUTPUTS_ROOT)
        ckpt, cfg, changed = stored_run(path, overrides, ("resume",))
        cfg.resume, run_dir, resumed_from, choices = str(path), path.parent.parent, str(path), ckpt.get("choices")
        del ckpt  # each training process loads it again: one copy per process, not one more in this one
    settings = load_settings(cfg)
    # Resolved and plain, so the worker processes (a fresh interpreter each, no Hydra) can take it.
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    return distributed.run(train, settings.device.type, settings.device.count, int(cfg.dataset.batch_size),
                           cfg, Path(run_dir), resumed_from=resumed_from, changed=tuple(changed), choices=choices)


def train(cfg: DictConfig, run_dir: Path, resumed_from: Optional[str] = None, changed: tuple[str, ...] = (),
          choices: Optional[dict] = None, group: Group = SINGLE) -> dict:
    """Train as configured, writing the whole record into `run_dir`; with `resumed_from` (a checkpoint)
    continue that run. `group`: the training processes this one is part of (rank 0 writes everything).
    Returns the last epoch's metrics; raises RunStopped after a NaN or a signal."""
    settings = load_settings(cfg)
    trainer, started = settings.trainer, time.perf_counter()
    runtime = resolve_runtime(settings.device.type, trainer.precision, trainer.channels_last, trainer.threads,
                              trainer.compile, group.local_rank, group.local_world_size)
    seed_everything(settings.seed)
    run = build_run(cfg, settings, runtime, group)
    resume = load_checkpoint(Path(resumed_from)) if resumed_from else None
    run.choices = {k: v for k, v in (choices or {}).items() if v is not None and not k.startswith("hydra")}
    best = BestTracker(settings.checkpoint.monitor, settings.checkpoint.mode)
    stopper = EarlyStopping(**vars(settings.early_stopping))
    start_epoch, step = _restore(resume, run, best, stopper) if resume else (1, 0)
    position, before = (resume or {}).get("position"), (resume or {}).get("elapsed_s", 0.0)
    recorder = RunRecorder(run_dir, run.data.classes, run.data.class_names, trainer.histogram_every_n_epochs,
                           history=(resume or {}).get("history"), active=group.is_main)
    checkpointer = Checkpointer(run_dir / "checkpoints", settings.checkpoint.every_n_epochs, settings.checkpoint.keep,
                                active=group.is_main)
    _record_start(recorder, cfg, settings, run, resumed_from, list(changed))
    elapsed = lambda: before + time.perf_counter() - started  # noqa: E731
    stopped, reason = "completed", f"reached trainer.epochs={trainer.epochs}"
    with StopRequest() as stop:
        for epoch in range(start_epoch, trainer.epochs + 1):
            tally, generator = _start_epoch(run, epoch, settings.seed, position)
            step = train_epoch(run.stepper, run.train_loader, run.train_metrics, tally, recorder, epoch, step,
                               run.n_train, trainer.log_every_n_steps, generator, stop)
            # Agreed between the ranks (one may have seen the signal or the NaN first): all take the same branch.
            first_bad, stopping = int(group.max(tally.first_bad)), group.any(stop.requested)
            if stopping and tally.batches < run.n_train and first_bad < 0:
                payload = _checkpoint(cfg, run, epoch - 1, step, best, stopper, recorder.history, elapsed())
                mine = {"tally": tally.state_dict(), "generator": generator.get_state(),
                        "train_metrics": run.train_metrics.state_dict(), "rng": capture_rng()}
                payload["position"] = {"epoch": epoch, "ranks": group.gather(mine)}
                path = checkpointer.save_interrupted(payload)
                stopped, reason = "interrupted", (f"{stop.name or 'another rank'} at epoch {epoch}, "
                                                  f"batch {tally.batches}; saved {path}")
                break
            row, confusions = _epoch_row(run, tally, epoch, step)
            recorder.log_epoch(row, confusions, run.stepper.model)
            if first_bad >= 0:  # recorded for the diagnosis, never checkpointed: last.ckpt stays the last good state
                stopped, reason = "nan", (f"non-finite loss or gradient at epoch {epoch}, step {first_bad}; lower "
                                          "optimizer.lr, set trainer.grad_clip, or use trainer.precision=bf16-mixed "
                                          "instead of 16-mixed (last.ckpt holds the last good epoch)")
                break
            run.stepper.schedule.after_epoch(row)
            improved = best.update(row)
            stopper.update(row)
            log.info(epoch_line(row, trainer.epochs, improved))
            checkpointer.save_epoch(_checkpoint(cfg, run, epoch, step, best, stopper, recorder.history, elapsed()),
                                    epoch, improved)
            if group.any(stop.requested):
                stopped, reason = "interrupted", (f"{stop.name or 'another rank'} at the end of epoch {epoch}; "
                                                  "saved last.ckpt")
                break
            if stopper.should_stop():
                stopped, reason = "early_stopping", stopper.reason()
                log.info("stopping early: %s", reason)
                break
    return _finish(recorder, cfg, runtime, run_dir, best, stopped, reason, elapsed(), stop.signum)


def _finish(recorder: RunRecorder, cfg: DictConfig, runtime: Runtime, run_dir: Path, best: BestTracker,
            stopped: str, reason: str, elapsed: float, signum: Optional[int]) -> dict:
    history = recorder.history
    summary = {
        "stopped": stopped, "stop_reason": reason, "epochs_run": len(history),
        "monitor": best.monitor, "mode": best.mode, "best_epoch": best.best_epoch,
        "best": next((r for r in history if r["epoch"] == best.best_epoch), None),
        "final": history[-1] if history else {}, "total_time_s": elapsed,
        "runtime": runtime.to_dict(), "run_dir": str(run_dir),
    }
    findings = diagnose(pd.DataFrame(history), summary, len(recorder.labels)) if recorder.active else []
    summary["diagnostics"] = as_dicts(findings)
    recorder.finish(summary, _hparams(cfg, runtime))
    for finding in findings:
        (log.warning if finding.severity == "warning" else log.info)("diagnosis: %s", finding.line())
    if history and not findings and recorder.active:
        log.info("diagnosis: no problems found in the curves")
    if stopped == "nan":
        raise RunStopped(f"stopped: {reason}", exit_code=1)
    if stopped == "interrupted":
        raise RunStopped(f"interrupted by {reason}; continue with: trainlab train resume={run_dir}",
                         exit_code=128 + (signum or 2))
    log.info("done: %s; best %s %.4f at epoch %s; outputs in %s", reason, best.monitor,
             best.best if best.best is not None else float("nan"), best.best_epoch, run_dir)
    return dict(history[-1]) if history else {}


def _hparams(cfg: DictConfig, runtime: Runtime) -> dict:
    """The flattened config as TensorBoard hparams (scalars and strings only)."""
    flat = pd.json_normalize(OmegaConf.to_container(cfg, resolve=True), sep=".").iloc[0].to_dict()
    flat.update({"runtime.precision": runtime.precision, "runtime.channels_last": runtime.channels_last})
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in flat.items()}
