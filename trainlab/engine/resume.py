"""A resumed run given another length (`trainlab train resume=<run> trainer.epochs=N`): what its learning-rate
schedule does from there, decided before anything is written.

A schedule fitted to the run's length (scheduler=cosine's T_max and scheduler=onecycle's total_steps, when the
config leaves them null to be filled from trainer.epochs) cannot be stretched without restarting (torch's cosine is
periodic past its length) or failing (one-cycle counts its steps): a longer resume is refused with the ways to train
longer, a new run from the run's weights or scheduler=wsd. A WSD run given a new length continues from the last
checkpoint before its decay began (checkpoints/stable.ckpt) and decays over the new length. Every other schedule
continues as configured; the learning rate it gives the new epochs is computed by stepping a copy of it, logged, and
a schedule that would train at lr 0 is refused."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig

from trainlab.core.config import load_settings
from trainlab.core.errors import ConfigError
from trainlab.engine.build import build_schedule
from trainlab.record.checkpoint import STABLE, load_checkpoint
from trainlab.record.run_dir import read_overrides

FITTED = ("T_max", "total_steps")  # the scheduler arguments trainlab fills from the run's length when null
_NOT_SGD = ("params", "fused", "foreach", "capturable", "differentiable")


def _stand_in(groups: list[dict]) -> torch.optim.Optimizer:
    """An optimizer of one scalar per parameter group with the checkpoint's group settings (lr, initial_lr, ...):
    enough to step a copy of the schedule without the model or its optimizer state."""
    params = [{**{k: v for k, v in g.items() if k not in _NOT_SGD}, "params": [torch.zeros(1, requires_grad=True)]}
              for g in groups]
    return torch.optim.SGD(params, lr=groups[0]["lr"])


def _steps_per_epoch(ckpt: dict) -> int:
    history = ckpt.get("history") or []
    return max(1, int(history[-1]["step"]) // max(int(history[-1]["epoch"]), 1)) if history else 1


def _stable_epochs(ckpt: dict, cfg: DictConfig) -> int | None:
    """The last epoch before cfg's schedule decays (scheduler=wsd), for the run's steps per epoch; None otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schedule = build_schedule(cfg, load_settings(cfg), _stand_in(ckpt["optimizer"]["param_groups"]),
                                  _steps_per_epoch(ckpt))
    return schedule.stable_epochs


def before_decay(ckpt: dict, cfg: DictConfig, path: Path) -> tuple[Path, str] | None:
    """A WSD run resumed with another trainer.epochs continues from a checkpoint whose epochs all ran before the
    decay of both the old and the new length: the given one if it qualifies, else the run's stable.ckpt (returned
    with the line to log). None when nothing changes; a ConfigError when no checkpoint of the run qualifies."""
    old, new = int(ckpt["config"]["trainer"]["epochs"]), int(cfg.trainer.epochs)
    if new == old or "optimizer" not in ckpt:
        return None
    new_stable = _stable_epochs(ckpt, cfg)
    if new_stable is None:
        return None
    from omegaconf import OmegaConf

    old_stable = _stable_epochs(ckpt, OmegaConf.create(ckpt["config"]))
    epoch = int(ckpt["epoch"]) + (1 if ckpt.get("position") else 0)  # the last epoch it trained (a part of)
    if old_stable is not None and epoch <= min(old_stable, new_stable):
        return None
    stable = Path(path).parent / STABLE
    stable_epoch = int(load_checkpoint(stable)["epoch"]) if stable.is_file() else None
    if stable_epoch is None or stable_epoch > new_stable:
        have = f"its {STABLE} is from epoch {stable_epoch}" if stable_epoch else f"it has no {STABLE}"
        raise ConfigError(f"resume with trainer.epochs={new}: scheduler=wsd with {new} epochs decays after epoch "
                          f"{new_stable}, and {path} is from epoch {epoch}, past the decay; {have}: resume from a "
                          f"checkpoint of an epoch <= {new_stable} (checkpoint.every_n_epochs keeps them), or "
                          f"choose trainer.epochs so the decay begins after epoch {stable_epoch or epoch}")
    return stable, (f"scheduler=wsd continues from {stable} (epoch {stable_epoch}, before its decay began) and decays "
                    f"over {_epochs(new_stable + 1, new)}; the record of {_epochs(stable_epoch + 1, old)} is replaced")


def _epochs(first: int, last: int) -> str:
    return f"epoch {first}" if first == last else f"epochs {first}-{last}"


def epoch_lrs(ckpt: dict, cfg: DictConfig) -> list[float]:
    """The learning rate of each epoch after the checkpoint's last one, up to cfg's trainer.epochs, as the resumed
    run will record it in its `lr` column (the mean over the epoch's optimizer steps): the same schedule built for
    the new length, loaded with the checkpoint's state, stepped as the loop steps it."""
    settings = load_settings(cfg)
    steps_per_epoch = _steps_per_epoch(ckpt)
    groups = ckpt["optimizer"]["param_groups"]
    optimizer = _stand_in(groups)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": nothing is trained here
        schedule = build_schedule(cfg, settings, optimizer, steps_per_epoch)
        for group, saved in zip(optimizer.param_groups, groups):
            group.update({k: v for k, v in saved.items() if k not in _NOT_SGD})
        schedule.load_state_dict(copy.deepcopy(ckpt["scheduler"]))  # torch's CyclicLR pops keys from what it loads
        lrs = []
        for _ in range(int(ckpt["epoch"]) + 1, settings.trainer.epochs + 1):
            if schedule.plateau:  # lowered only when the monitored metric stalls: stays as it is until then
                lrs.append(schedule.lr)
                continue
            steps = []
            for _ in range(steps_per_epoch if schedule.interval == "step" else 1):
                steps.append(schedule.lr)
                try:
                    schedule.scheduler.step()
                except ValueError as e:  # one-cycle with a total_steps of its own, shorter than the new run
                    raise ConfigError(f"scheduler: {e}") from None
            lrs.append(sum(steps) / len(steps))
    return lrs


def _shown(lrs: list[float]) -> str:
    values = [f"{lr:.3g}" for lr in lrs]
    return ", ".join(values if len(values) <= 6 else values[:3] + ["..."] + values[-2:])


def check_length(ckpt: dict, cfg: DictConfig, path: Path) -> str | None:
    """None when the resumed run keeps its length; otherwise the line to log about its learning rate from here,
    or a ConfigError (one line saying how to train longer) when its schedule cannot continue."""
    old, new = int(ckpt["config"]["trainer"]["epochs"]), int(cfg.trainer.epochs)
    if new == old:
        return None
    name = (ckpt.get("choices") or {}).get("scheduler") or str(cfg.scheduler.get("_target_", "?")).rsplit(".")[-1]
    last = Path(path).parent / "last.ckpt"
    given = [o for o in read_overrides(Path(path).parent.parent)
             if o.split("=", 1)[0].lstrip("+~") not in ("resume", "overwrite", "trainer.epochs", "model.weights")]
    longer = (f"to train longer, start a new run from its weights: trainlab train {' '.join(given + [''])}"
              f"trainer.epochs={new} model.weights={last} (and plan runs you may extend with scheduler=wsd, which "
              "continues into a longer run)")
    wsd = str(cfg.scheduler.get("_target_", "")).endswith(".WSD")  # extended from before its decay (before_decay)
    fitted = [key for key in FITTED if key in cfg.scheduler and cfg.scheduler[key] is None and not wsd]
    if fitted and new > old:
        raise ConfigError(f"resume with trainer.epochs={new}: scheduler={name} is fitted to the run's {old} epochs "
                          f"({fitted[0]} comes from trainer.epochs), so it cannot go past them without restarting "
                          f"its schedule; resume with trainer.epochs={old}, or {longer}")
    try:
        lrs = epoch_lrs(ckpt, cfg)
    except ConfigError as e:
        raise ConfigError(f"resume with trainer.epochs={new}: {e}; {longer}") from None
    first = int(ckpt["epoch"]) + 1
    zero = next((first + i for i, lr in enumerate(lrs) if lr <= 0), None)
    if zero is not None:
        raise ConfigError(f"resume with trainer.epochs={new}: scheduler={name} would train epoch {zero} at lr 0 (it "
                          f"reached the end of its schedule); {longer}")
    if not lrs:
        return f"trainer.epochs {old} -> {new}: the run has trained {first - 1} epochs, so it ends now"
    return (f"trainer.epochs {old} -> {new}: scheduler={name} continues as configured; the learning rate of epochs "
            f"{first}-{new}: {_shown(lrs)}")
