"""Optimizer and learning-rate schedule built from their config groups' `_target_`.

The `scheduler` group holds only the torch scheduler's arguments; how it is driven (per epoch or per
optimizer step, the linear warm-up before it, the metric a plateau scheduler watches) is the
`lr_schedule` block, passed to `LRSchedule` as its keyword arguments.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import (
    LinearLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

from trainlab.core.errors import ConfigError, require

WARMUP_START_FACTOR = 0.01  # warm-up starts at lr/100: small enough to be safe, large enough to move


def fused_choice(make: Callable[..., torch.optim.Optimizer], device: str) -> tuple[dict, str]:
    """(extra keyword arguments, why): on a GPU, torch's fused implementation (one kernel for the whole update
    instead of a few per parameter tensor) where the optimizer has one and the config sets neither `fused` nor
    `foreach`. The result is the same update; only the launch overhead goes."""
    import inspect

    target = getattr(make, "func", make)
    given = getattr(make, "keywords", {}) or {}
    if not device.startswith("cuda"):
        return {}, "torch's default implementation (fused kernels are used on a GPU)"
    if "fused" in given or "foreach" in given:
        return {}, "as set by optimizer.fused / optimizer.foreach"
    try:
        takes = "fused" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        takes = False
    name = getattr(target, "__name__", str(target))
    if takes:
        try:  # some fused kernels exist for the CPU only (Adagrad's): try one on this device
            make([torch.zeros(1, device=device, requires_grad=True)], fused=True)
        except (RuntimeError, ValueError, TypeError):
            takes = False
    if not takes:
        return {}, f"{name} has no fused implementation on this device: torch's default (foreach)"
    return {"fused": True}, f"{name} fused: one kernel per update on the GPU (optimizer.fused=false turns it off)"


def build_optimizer(make: Callable[..., torch.optim.Optimizer], params, **extra) -> torch.optim.Optimizer:
    """The configured optimizer; trainlab asks more of lr and weight_decay than torch does (lr=0 trains nothing).
    `extra`: keyword arguments trainlab chose (see `fused_choice`)."""
    try:
        optimizer = make(params, **extra)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot build the optimizer: {e} (check the optimizer.* keys)") from None
    group = optimizer.param_groups[0]
    require(group["lr"] > 0, f"optimizer.lr must be > 0 (got {group['lr']})")
    require(group.get("weight_decay", 0) >= 0, f"optimizer.weight_decay must be >= 0 (got {group['weight_decay']})")
    return optimizer


class WSD(LRScheduler):
    """Warm-up, stable, decay (the trapezoid; trainlab's warm-up comes before it, as for every scheduler): the base
    learning rate for the first total_iters - round(decay_fraction * total_iters) steps, then a linear or cosine
    cool-down towards `min_factor` x the base, which the step after the last would reach (no step runs at 0).
    Extendable: its stable phase is the same whatever the length, so a run continued from a checkpoint taken before
    the decay began (checkpoints/stable.ckpt) with a longer total_iters decays over the new length exactly as a run
    planned that long; its length is the config's, never a checkpoint's."""

    LENGTH = ("total_iters", "decay_fraction", "decay", "min_factor")  # decided by the config when loading a state

    def __init__(self, optimizer: torch.optim.Optimizer, total_iters: int, decay_fraction: float = 0.2,
                 decay: str = "linear", min_factor: float = 0.0, last_epoch: int = -1):
        require(total_iters is not None and int(total_iters) >= 1,
                f"scheduler.total_iters must be >= 1 or null (the run's length) (got {total_iters})")
        require(0 <= decay_fraction <= 1, f"scheduler.decay_fraction must be in [0, 1] (got {decay_fraction})")
        require(decay in ("linear", "cosine"), f"scheduler.decay must be linear or cosine (got {decay!r})")
        require(0 <= min_factor <= 1, f"scheduler.min_factor must be in [0, 1] (got {min_factor})")
        self.total_iters, self.decay_fraction = int(total_iters), float(decay_fraction)
        self.decay, self.min_factor = decay, float(min_factor)
        super().__init__(optimizer, last_epoch)

    @staticmethod
    def stable_steps(total_iters: int, decay_fraction: float) -> int:
        """How many of its steps run at the base learning rate."""
        return int(total_iters) - round(float(decay_fraction) * int(total_iters))

    def factor(self, t: int) -> float:
        start = self.stable_steps(self.total_iters, self.decay_fraction)
        if t < start:
            return 1.0
        p = min(1.0, (t - start + 1) / (self.total_iters - start + 1))
        shape = (1 - p) if self.decay == "linear" else (1 + math.cos(math.pi * p)) / 2
        return self.min_factor + (1 - self.min_factor) * shape

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in self.LENGTH})


class LRSchedule:
    """Wraps a torch scheduler so the loop calls `after_step()` every optimizer step and
    `after_epoch(metrics)` every epoch; only the one matching `interval` advances the schedule."""

    def __init__(self, make: Callable[..., object], optimizer: torch.optim.Optimizer, *, interval: str,
                 warmup_epochs: int, length: tuple[int, int], monitor: str | None = None, unset: tuple[str, ...] = ()):
        """`length`: the run's (epochs, optimizer steps per epoch). `unset`: the scheduler's length arguments the
        config leaves null (T_max, total_steps), filled here from the run's length."""
        epochs, steps_per_epoch = length
        require(interval in ("epoch", "step"), f"lr_schedule.interval must be epoch or step (got {interval!r})")
        self.interval, self.monitor = interval, monitor
        self.optimizer = optimizer
        per_unit = steps_per_epoch if interval == "step" else 1
        warmup = int(warmup_epochs) * per_unit
        remaining = max(1, (epochs - int(warmup_epochs)) * per_unit)
        lengths = {"T_max": remaining, "total_steps": epochs * steps_per_epoch, "total_iters": remaining}
        kwargs = {key: lengths[key] for key in unset if key in lengths}
        target = getattr(make, "func", make)
        if target is OneCycleLR and interval != "step":
            raise ConfigError("scheduler=onecycle must step per optimizer step: set lr_schedule.interval=step")
        if target is OneCycleLR and warmup:
            raise ConfigError("scheduler=onecycle has its own warm-up (scheduler.pct_start of the run, from "
                              "max_lr/div_factor): set lr_schedule.warmup_epochs=0")
        if warmup and target in (StepLR, MultiStepLR):
            # Milestones are epochs (steps) of the run, as the YAML says; the main schedule's count starts after
            # the warm-up, so they are given to it shifted (StepLR's as the milestones its step_size makes).
            kwargs["milestones"] = _milestones_after(make, warmup, epochs * per_unit,
                                                     "epochs" if interval == "epoch" else "optimizer steps")
            kwargs["gamma"] = make.keywords.get("gamma", 0.1)
            make = MultiStepLR
        try:
            main = make(optimizer, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"cannot build the lr scheduler: {e} (check the scheduler.* keys)") from None
        self.plateau = isinstance(main, ReduceLROnPlateau)
        if self.plateau and warmup:
            raise ConfigError("scheduler=plateau does not combine with warm-up: set lr_schedule.warmup_epochs=0")
        if self.plateau and not monitor:
            raise ConfigError("scheduler=plateau needs lr_schedule.monitor (for example val/loss)")
        if warmup:
            ramp = LinearLR(optimizer, start_factor=WARMUP_START_FACTOR, end_factor=1.0, total_iters=warmup)
            main = SequentialLR(optimizer, [ramp, main], milestones=[warmup])
        self.scheduler: LRScheduler | ReduceLROnPlateau = main
        # The last epoch trained entirely before a WSD decay begins (its checkpoint is what a longer run continues
        # from); None for every other schedule.
        self.stable_epochs = None
        wsd = main if isinstance(main, WSD) else next((s for s in getattr(main, "_schedulers", ()) if isinstance(
            s, WSD)), None)
        if wsd is not None:
            self.stable_epochs = (warmup + WSD.stable_steps(wsd.total_iters, wsd.decay_fraction)) // per_unit

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def after_step(self) -> None:
        if self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, metrics: dict[str, float]) -> None:
        if self.interval != "epoch":
            return
        if self.plateau:
            if self.monitor not in metrics:
                raise ConfigError(f"lr_schedule.monitor={self.monitor} is not a recorded metric "
                                  f"(choose from {', '.join(sorted(metrics))})")
            self.scheduler.step(metrics[self.monitor])
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state)
        active = self.scheduler
        if isinstance(active, SequentialLR):
            active = active._schedulers[bisect.bisect_right(active._milestones, active.last_epoch)]
        if isinstance(active, WSD):  # of this run's length: the checkpoint's lr was its own length's next one
            lrs = active.get_lr()
            for group, lr in zip(self.optimizer.param_groups, lrs):
                group["lr"] = lr
            active._last_lr = self.scheduler._last_lr = lrs


def _milestones_after(make, warmup: int, length: int, unit: str) -> list[int]:
    """StepLR's / MultiStepLR's milestones of the run (in `unit`s: epochs or optimizer steps), counted from the end
    of a `warmup`-long warm-up for the main schedule, whose count starts there. A milestone within the warm-up is
    refused: the warm-up ramps to the undecayed lr."""
    given = dict(make.keywords)
    if "milestones" in given:
        milestones = sorted(int(m) for m in given["milestones"])
        name = f"scheduler.milestones={list(given['milestones'])}"
    else:
        size = int(given.get("step_size", 0))
        require(size > 0, f"scheduler.step_size must be > 0 (got {size})")
        # Up to 10x the planned length, so a resume that trains longer keeps decaying every step_size.
        milestones, name = list(range(size, 10 * max(length, size) + 1, size)), f"scheduler.step_size={size}"
    within = [m for m in milestones if m <= warmup]
    if within:
        raise ConfigError(f"{name}: milestone {within[0]} is within the warm-up's {warmup} {unit} "
                          "(milestones count the run's own epochs): move it past the warm-up or lower "
                          "lr_schedule.warmup_epochs")
    return [m - warmup for m in milestones]


class WeightEMA(torch.optim.swa_utils.AveragedModel):
    """An exponential moving average of the weights and buffers (`trainer.ema_decay`): torch's AveragedModel,
    whose `update_parameters` reads its step counter back to the host twice per call (a GPU stall every step).
    Here that happens once, at the first update after building or loading; later updates are the same
    `multi_avg_fn` calls on the device."""

    def __init__(self, model: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        # use_buffers: BatchNorm's running statistics are averaged too, so the EMA model validates as it is.
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        self._started: bool | None = None  # unknown until read once (a loaded state may have started)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._started = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def update_parameters(self, model: torch.nn.Module) -> None:
        import itertools

        if self._started is None:
            self._started = bool(self.n_averaged > 0)
        if not self._started:  # the first update copies the weights: torch's own code
            super().update_parameters(model)
            self._started = True
            return
        groups: dict = {}
        mine = itertools.chain(self.module.parameters(), self.module.buffers())
        theirs = itertools.chain(model.parameters(), model.buffers())
        for averaged, current in zip(mine, theirs):
            own, new = groups.setdefault((averaged.device, averaged.dtype), ([], []))
            own.append(averaged.detach())
            new.append(current.detach().to(averaged.device))
        for own, new in groups.values():
            self.multi_avg_fn(own, new, self.n_averaged)
        self.n_averaged += 1

