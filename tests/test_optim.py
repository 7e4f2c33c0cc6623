"""The lr schedule wrapper: warm-up, per-step schedules, plateau, and refusals."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from trainlab.core.errors import ConfigError
from trainlab.optim import WARMUP_START_FACTOR, LRSchedule


def sgd(lr=1.0):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def epoch_lrs(schedule, opt, epochs, steps):
    lrs = []
    for _ in range(epochs):
        lrs.append(schedule.lr)
        for _ in range(steps):
            opt.step()
            schedule.after_step()
        schedule.after_epoch({"val/loss": 1.0})
    return lrs


def test_linear_warmup_then_cosine_per_epoch():
    opt = sgd(1.0)
    make = functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=None, eta_min=0.0)
    schedule = LRSchedule(make, opt, interval="epoch", warmup_epochs=2, length=(6, 3), unset=("T_max",))
    lrs = epoch_lrs(schedule, opt, 6, 3)
    assert lrs[0] == pytest.approx(WARMUP_START_FACTOR)
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(1.0)
    # cosine over the 4 epochs after warm-up: 1, cos at 1/4, 2/4, 3/4 of the way
    for k, lr in enumerate(lrs[2:]):
        assert lr == pytest.approx(0.5 * (1 + math.cos(math.pi * k / 4)))


def test_onecycle_runs_over_every_step():
    opt = sgd(0.1)
    make = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1, total_steps=None, cycle_momentum=False)
    schedule = LRSchedule(make, opt, interval="step", warmup_epochs=0, length=(3, 4),
                          unset=("total_steps",))
    epoch_lrs(schedule, opt, 3, 4)  # would raise if it stepped past total_steps
    assert schedule.scheduler.total_steps == 12


def test_plateau_reduces_on_the_monitored_metric_and_refuses_warmup():
    opt = sgd(1.0)
    make = functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau, factor=0.5, patience=0)
    schedule = LRSchedule(make, opt, interval="epoch", warmup_epochs=0, length=(5, 1), monitor="val/loss")
    for _ in range(3):
        schedule.after_epoch({"val/loss": 1.0})
    assert schedule.lr == pytest.approx(0.25)
    with pytest.raises(ConfigError, match="warm-up"):
        LRSchedule(make, sgd(), interval="epoch", warmup_epochs=1, length=(5, 1), monitor="val/loss")
    with pytest.raises(ConfigError, match="not a recorded metric"):
        schedule.after_epoch({"val/acc1": 0.3})
