"""Tracking the best value of a metric, and early stopping built on it: stop when the monitored metric
has not improved by more than `min_delta` for `patience` epochs."""

from __future__ import annotations

import math


class BestTracker:
    def __init__(self, monitor: str, mode: str, min_delta: float = 0.0):
        self.monitor, self.mode, self.min_delta = monitor, mode, min_delta
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0

    def update(self, row: dict) -> bool:
        """Record one epoch; True when it is the best so far."""
        value = row[self.monitor]
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if math.isfinite(value) and better:
            self.best, self.best_epoch, self.bad_epochs = value, row["epoch"], 0
            return True
        self.bad_epochs += 1
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


class EarlyStopping(BestTracker):
    def __init__(self, enabled: bool, monitor: str, mode: str, patience: int, min_delta: float):
        super().__init__(monitor, mode, min_delta)
        self.enabled, self.patience = enabled, patience

    def should_stop(self) -> bool:
        return self.enabled and self.bad_epochs >= self.patience

    def reason(self) -> str:
        return (f"early stopping: {self.monitor} has not improved by more than {self.min_delta:g} for "
                f"{self.patience} epochs (best {self.best:.4f} at epoch {self.best_epoch})")
