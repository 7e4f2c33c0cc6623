"""The fit: build data, model, optimizer, schedule and metrics from the config, then for each epoch train, validate,
record, checkpoint, and stop early when asked (early stopping, a non-finite loss, SIGINT/SIGTERM). A run resumed
from a checkpoint continues exactly where it stopped. `trainlab train` (commands.train) runs it in each training
process."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

import trainlab
from trainlab.core.config import Settings, TargetSettings, load_settings, settings_dict
from trainlab.core.errors import CheckpointError, RunStopped
from trainlab.core.runtime import Runtime, epoch_seed, resolve_runtime, seed_everything
from trainlab.engine.build import Run, build_loggers, build_run
from trainlab.engine.distributed import SINGLE, Group
from trainlab.engine.early_stopping import BestTracker, EarlyStopping
from trainlab.engine.interrupt import StopRequest
from trainlab.engine.loop import EpochTally, epoch_line, epoch_row, train_epoch
from trainlab.engine.step import model_input
from trainlab.loggers import flat_config
from trainlab.models import count_parameters
from trainlab.record.checkpoint import (
    Checkpointer,
    TrainingState,
    capture_rng,
    load_checkpoint,
    restore_rng,
)
from trainlab.record.environment import environment, requirements
from trainlab.record.recorder import RunRecorder, SilentRecorder
from trainlab.record.run_dir import RUN_JSON
from trainlab.record.stored_run import check_classes
from trainlab.record.study import TrialReport

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """How the epochs ended: completed, early_stopping, pruned (by a search), interrupted (by `signum`) or nan, and
    why."""
    kind: str
    reason: str
    signum: int | None = None


def _state(cfg: DictConfig, run: Run, epoch: int, step: int, best: BestTracker, stopper: EarlyStopping,
           history: list[dict], elapsed: float) -> TrainingState:
    s = run.stepper
    return TrainingState(
        epoch=epoch, step=step, model=s.model.state_dict(), optimizer=s.optimizer.state_dict(),
        scheduler=s.schedule.state_dict(), scaler=s.scaler.state_dict(), best=best.state_dict(),
        early_stopping=stopper.state_dict(), rng=capture_rng(), classes=run.data.classes,
        class_names=run.data.class_names, normalization={"mean": list(run.data.mean), "std": list(run.data.std)},
        config=OmegaConf.to_container(cfg, resolve=True), choices=run.choices, history=history, elapsed_s=elapsed,
        speed={"precision": s.runtime.precision, "channels_last": s.runtime.channels_last,
               "compile": s.runtime.compile},
        ema=s.ema.state_dict() if s.ema is not None else None)


def _restore(resume: TrainingState, run: Run, best: BestTracker, stopper: EarlyStopping) -> tuple[int, int]:
    """Load a checkpoint's training state; returns (first epoch to run, global step)."""
    s = run.stepper
    ranks = len(resume.position["ranks"]) if resume.position else s.group.world_size
    if ranks != s.group.world_size:
        raise CheckpointError(f"this checkpoint stopped in the middle of an epoch with {ranks} training "
                              f"process(es); resume it with device.count={ranks} "
                              "(or resume=<run>/checkpoints/last.ckpt)")
    check_classes(resume.classes, run.data.classes, "the checkpoint")
    s.model.load_state_dict(resume.model)
    s.optimizer.load_state_dict(resume.optimizer)
    s.schedule.load_state_dict(resume.scheduler)
    s.scaler.load_state_dict(resume.scaler)
    if s.ema is not None and resume.ema is not None:
        s.ema.load_state_dict(resume.ema)
    elif s.ema is not None:
        log.info("EMA: the checkpoint has no averaged weights; the average starts from its weights now")
    best.load_state_dict(resume.best)
    stopper.load_state_dict(resume.early_stopping)
    restore_rng(resume.rng)
    where = f"epoch {resume.epoch + 1}" + (f", batch {resume.position['ranks'][0]['tally']['batches']}"
                                           if resume.position else "")
    log.info("resuming at %s (global step %d)", where, resume.step)
    return resume.epoch + 1, resume.step


def _start_epoch(run: Run, epoch: int, seed: int, step: int,
                 position: dict | None) -> tuple[EpochTally, torch.Generator]:
    """Seed the epoch, or, for the epoch a mid-epoch checkpoint stopped in, restore where it was."""
    device, rank = run.stepper.runtime.torch_device, run.stepper.group.rank
    # Each rank augments (and drops out) its own samples with its own stream; rank 0's is a single process's.
    torch.manual_seed(epoch_seed(seed, epoch) + 7919 * rank)
    generator = torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch) + 7919 * rank)
    tally = EpochTally(device, epoch, step)
    run.train_metrics.reset()
    if position is not None and position["epoch"] == epoch:
        mine = position["ranks"][rank]
        tally.load_state_dict(mine["tally"])
        run.train_metrics.load_state_dict(mine["train_metrics"])
        generator.set_state(mine["generator"])
        restore_rng(mine["rng"])
    run.train_loader.sampler.set_epoch(epoch, start_batch=tally.batches)
    return tally, generator


def _record_start(recorder: SilentRecorder, cfg: DictConfig, settings: Settings, run: Run,
                  resumed_from: str | None, changed: list[str]) -> None:
    info = recorder.read_json(RUN_JSON) if resumed_from else {}
    where = environment()
    if resumed_from:
        info.setdefault("resumes", []).append({"time": datetime.now().isoformat(timespec="seconds"),
                                               "from": resumed_from, "changed": changed, "environment": where})
        log.info("resumed from %s%s", resumed_from, f"; changed: {', '.join(changed)}" if changed else "")
    model, group = run.stepper.model, run.stepper.group
    info.update({
        "trainlab_version": trainlab.__version__, "torch_version": str(torch.__version__),
        "runtime": run.stepper.runtime.to_dict(), "settings": settings_dict(settings), "data": run.data.describe(),
        "augment": run.stepper.augment.describe(), "model": {"parameters": count_parameters(model)},
        "distributed": group.describe() | {"batch_size_global": run.data.batch_size,
                                           "batch_size_per_process": run.data.batch_size // group.world_size},
        "steps_per_epoch": run.n_train, "val_batches": run.n_val, "config": OmegaConf.to_container(cfg, resolve=True)})
    if not resumed_from:  # where it first ran; a resume records its own environment in `resumes`
        info["environment"] = where
        recorder.write_text("requirements.txt", requirements())
    if recorder.trackers:  # MLflow / W&B: their run's id is kept, so a resume continues the same run there
        info["loggers"] = info.get("loggers", {}) | recorder.start_loggers(
            OmegaConf.to_container(cfg, resolve=True), info.get("loggers", {}))
    recorder.write_json(RUN_JSON, info)
    if not resumed_from:  # the graph is the same on resume: write it once
        model.eval()
        recorder.log_graph(model, model_input(run.data.splits["val"].images[:2], run.stepper.augment,
                                              run.stepper.runtime))
    group = run.stepper.group
    log.info("model: %s, %s parameters; %d train batches of %d per epoch; writing to %s", type(model).__name__,
             f"{count_parameters(model):,}", run.n_train, run.data.batch_size, recorder.run_dir)
    if group.world_size > 1:
        log.info("processes: %d on %d machine(s), %s backend, started by %s; dataset.batch_size=%d is the global "
                 "batch, %d per process", group.world_size, group.nodes, group.backend, group.launcher,
                 run.data.batch_size, run.data.batch_size // group.world_size)


def train(cfg: DictConfig, run_dir: Path, resumed_from: str | None = None, changed: tuple[str, ...] = (),
          choices: dict | None = None, group: Group = SINGLE, settings: Settings | None = None,
          trial: TrialReport | None = None) -> dict:
    """Train as configured, writing the whole record into `run_dir`; with `resumed_from` (a checkpoint)
    continue that run. `group`: the training processes this one is part of (rank 0 writes everything).
    `settings`: cfg's, when the caller has loaded them. `trial`: a search's trial, told the monitored value after
    each epoch; its pruner may stop the run there. Returns the last epoch's metrics; raises RunStopped after
    a NaN or a signal."""
    settings = settings or load_settings(cfg)
    trainer, started = settings.trainer, time.perf_counter()
    planned = resolve_runtime(settings.device.type, trainer.precision, trainer.channels_last, trainer.threads,
                              trainer.compile, (group.local_rank, group.local_world_size), trainer.autotune)
    seed_everything(settings.seed)
    resume = TrainingState.from_payload(load_checkpoint(Path(resumed_from)), Path(resumed_from)) \
        if resumed_from else None
    run = build_run(cfg, settings, planned, group, resume=resume)  # settles autotune's and the data's choices
    run.choices = {k: v for k, v in (choices or {}).items() if v is not None and not k.startswith("hydra")}
    best = BestTracker(settings.checkpoint.monitor, settings.checkpoint.mode)
    stopper = EarlyStopping(**vars(settings.early_stopping))
    start_epoch, first_step = _restore(resume, run, best, stopper) if resume else (1, 0)
    position, before = (resume.position, resume.elapsed_s) if resume else (None, 0.0)
    history = resume.history if resume else None
    recorder = RunRecorder(run_dir, run.data.classes, run.data.class_names, trainer.histogram_every_n_epochs,
                           history, build_loggers(cfg)) if group.is_main else SilentRecorder(run_dir, history)
    checkpointer = Checkpointer(run_dir / "checkpoints", settings.checkpoint.every_n_epochs, settings.checkpoint.keep,
                                active=group.is_main, save_optimizer=settings.checkpoint.save_optimizer)
    _record_start(recorder, cfg, settings, run, resumed_from, list(changed))
    elapsed = lambda: before + time.perf_counter() - started  # noqa: E731

    step, outcome = first_step, Outcome("completed", f"reached trainer.epochs={trainer.epochs}")
    with StopRequest() as stop:
        for epoch in range(start_epoch, trainer.epochs + 1):
            tally, generator = _start_epoch(run, epoch, settings.seed, step, position)
            train_epoch(run, tally, generator, recorder, stop, trainer.log_every_n_steps)
            step = tally.step
            # Agreed between the ranks (one may have seen the signal or the NaN first): all take the same branch.
            first_bad, stopping = int(group.max(tally.first_bad)), group.any(stop.requested)
            if stopping and tally.batches < run.n_train and first_bad < 0:  # mid-epoch: save where it is
                state = _state(cfg, run, epoch - 1, step, best, stopper, recorder.history, elapsed())
                mine = {"tally": tally.state_dict(), "generator": generator.get_state(),
                        "train_metrics": run.train_metrics.state_dict(), "rng": capture_rng()}
                state.position = {"epoch": epoch, "ranks": group.gather(mine)}
                path = checkpointer.save_interrupted(state.payload())
                outcome = Outcome("interrupted", f"{stop.name or 'another rank'} at epoch {epoch}, batch "
                                                 f"{tally.batches}; saved {path}", stop.signum)
                break
            row, confusions = epoch_row(run, tally)  # validates
            recorder.log_epoch(row, confusions, run.stepper.model)
            if first_bad >= 0:  # recorded for the diagnosis, never checkpointed: last.ckpt stays the last good state
                outcome = Outcome("nan", f"non-finite loss or gradient at epoch {epoch}, step {first_bad}; lower "
                                         "optimizer.lr, set trainer.grad_clip, or use trainer.precision=bf16-mixed "
                                         "instead of 16-mixed (last.ckpt holds the last good epoch)")
                break
            if trainer.activations_every_n_epochs and epoch % trainer.activations_every_n_epochs == 0:
                _watch(run, recorder, epoch, step)
            run.stepper.schedule.after_epoch(row)
            improved = best.update(row)
            stopper.update(row)
            log.info(epoch_line(row, trainer.epochs, improved))
            state = _state(cfg, run, epoch, step, best, stopper, recorder.history, elapsed())
            checkpointer.save_epoch(state.payload(), epoch, improved, epoch == run.stepper.schedule.stable_epochs)
            if group.any(stop.requested):
                outcome = Outcome("interrupted", f"{stop.name or 'another rank'} at the end of epoch {epoch}; "
                                                 "saved last.ckpt", stop.signum)
                break
            if trial is not None and group.any(group.is_main and trial.prune(epoch, row.get(best.monitor))):
                outcome = Outcome("pruned", f"the search's {trial.pruner} pruner stopped trial {trial.number} after "
                                            f"epoch {epoch} ({best.monitor} {row.get(best.monitor):.4f})")
                log.info("pruned: %s", outcome.reason)
                break
            if stopper.should_stop():
                log.info("stopping early: %s", stopper.reason())
                outcome = Outcome("early_stopping", stopper.reason())
                break
        # A signal while the summary and plots are written (seconds) waits for them: stopping there would leave a
        # run whose epochs all ran without its summary.json. (A second one still aborts.)
        stop.finishing = True
        return _finish(recorder, cfg, run.stepper.runtime, best, outcome, elapsed(), settings.target)


def _watch(run: Run, recorder: SilentRecorder, epoch: int, step: int) -> None:
    """Per-layer activation statistics on a fixed val batch (the same images every time) and its first image's
    feature maps: in eval mode, no gradients, no RNG drawn (so runs and resumes stay exact)."""
    from trainlab.analysis.activations import capture, watched_layers

    s = run.stepper
    images = run.data.splits["val"].images[:32]
    x = model_input(images, s.augment, s.runtime)
    outputs = capture(s.model, x, watched_layers(s.model))
    recorder.log_activations(epoch, step, images[0], outputs)


def time_to_target(history: list[dict], target: TargetSettings) -> dict | None:
    """The first epoch whose `target.metric` reaches `target.value`, and the seconds of training until its end:
    the sum of metrics.csv's time/train_s and time/val_s up to it (so the number can be checked from the CSV,
    and set-up, checkpoints and a resume's pause are not in it). None when no target is set."""
    if target.value is None:
        return None
    reached = (lambda v: v >= target.value) if target.mode == "max" else (lambda v: v <= target.value)
    seconds = 0.0
    for row in history:
        seconds += row["time/train_s"] + row["time/val_s"]
        value = row.get(target.metric)
        if value is not None and value == value and reached(value):
            return {"metric": target.metric, "mode": target.mode, "value": target.value,
                    "epoch": row["epoch"], "train_s": seconds, "reached": value}
    return {"metric": target.metric, "mode": target.mode, "value": target.value, "epoch": None,
            "train_s": None, "reached": None}


def _target_line(found: dict) -> str:
    sign = ">=" if found["mode"] == "max" else "<="
    if found["epoch"] is None:
        return f"{found['metric']} never reached {sign} {found['value']:g}"
    return (f"{found['metric']} {sign} {found['value']:g} at epoch {found['epoch']} ({found['reached']:.4f}) after "
            f"{found['train_s']:.1f} s of training")


def _finish(recorder: SilentRecorder, cfg: DictConfig, runtime: Runtime, best: BestTracker, outcome: Outcome,
            elapsed: float, target: TargetSettings) -> dict:
    history, run_dir = recorder.history, recorder.run_dir
    found = time_to_target(history, target)
    summary = {
        "stopped": outcome.kind, "stop_reason": outcome.reason, "epochs_run": len(history),
        "monitor": best.monitor, "mode": best.mode, "best_epoch": best.best_epoch,
        "best": next((r for r in history if r["epoch"] == best.best_epoch), None),
        "final": history[-1] if history else {}, "total_time_s": elapsed,
        "runtime": runtime.to_dict(), "run_dir": str(run_dir),
    } | ({"time_to_target": found} if found else {})
    recorder.finish(summary, _hparams(cfg, runtime))  # with the diagnosis of the curves
    if outcome.kind == "nan":
        raise RunStopped(f"stopped: {outcome.reason}", exit_code=1)
    if outcome.kind == "interrupted":
        raise RunStopped(f"interrupted by {outcome.reason}; continue with: trainlab train resume={run_dir}",
                         exit_code=128 + (outcome.signum or 2))
    log.info("done: %s; best %s %.4f at epoch %s;%s outputs in %s", outcome.reason, best.monitor,
             best.best if best.best is not None else float("nan"), best.best_epoch,
             f" {_target_line(found)};" if found else "", run_dir)
    return dict(history[-1]) if history else {}


def _hparams(cfg: DictConfig, runtime: Runtime) -> dict:
    """The flattened config as TensorBoard hparams (scalars and strings only)."""
    return flat_config(OmegaConf.to_container(cfg, resolve=True)) | {
        "runtime.precision": runtime.precision, "runtime.channels_last": runtime.channels_last}
