"""Diagnostics on synthetic histories built to show each pattern, and on a healthy one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from trainlab.analysis.diagnostics import diagnose


def history(n=10, **columns) -> pd.DataFrame:
    """A healthy run (loss falling, accuracy rising, val tracking train), with `columns` replaced."""
    e = np.arange(1, n + 1)
    base = {
        "epoch": e, "train/loss": 2.0 * 0.8 ** e, "val/loss": 2.1 * 0.82 ** e,
        "train/acc1": 1 - 0.7 * 0.75 ** e, "val/acc1": 1 - 0.72 * 0.77 ** e,
        "lr": np.full(n, 0.1), "grad_norm": np.full(n, 2.0), "grad_norm_max": np.full(n, 4.0),
    }
    base.update({k.replace("__", "/"): np.asarray(v, dtype=float) for k, v in columns.items()})
    return pd.DataFrame(base)


def kinds(frame, summary=None, num_classes=10):
    return [f.kind for f in diagnose(frame, summary, num_classes) if f.severity == "warning"]


def test_healthy_run_has_no_warnings():
    assert kinds(history()) == []


def test_diverged_non_finite_and_blow_up():
    nan = history(5, train__loss=[2.0, 1.5, 1.2, np.nan, np.nan])
    (finding,) = [f for f in diagnose(nan, None, 10) if f.kind == "diverged"]
    assert finding.epochs == (4, 5) and "lower optimizer.lr" in finding.suggestion
    assert "diverged" in kinds(history(5, train__loss=[2.0, 1.0, 0.8, 9.0, 7.0]))


def test_accuracy_at_chance_level():
    stuck = history(6, val__acc1=[0.1, 0.11, 0.09, 0.1, 0.12, 0.1], train__acc1=[0.1] * 6)
    findings = [f for f in diagnose(stuck, None, 10) if f.kind == "chance level"]
    assert findings and "chance is 0.100" in findings[0].evidence
    assert "learning rate may be too high" in findings[0].suggestion
    assert "chance level" not in kinds(stuck, num_classes=200)  # 0.12 is far above 1/200


def test_loss_plateau():
    flat = history(8, train__loss=[2.0, 1.5, 1.3, 1.2, 1.2, 1.199, 1.198, 1.198], train__acc1=[0.4] * 8)
    (finding,) = [f for f in diagnose(flat, None, 10) if f.kind == "loss plateau"]
    assert finding.epochs == (5, 8) and "too low" in finding.suggestion


def test_overfitting_onset_and_gap():
    val = [1.5, 1.1, 0.9, 0.8, 0.85, 0.95, 1.1, 1.3]
    frame = history(8, val__loss=val, val__acc1=[0.5, 0.6, 0.65, 0.68, 0.68, 0.67, 0.67, 0.66])
    (finding,) = [f for f in diagnose(frame, None, 10) if f.kind == "over-fitting"]
    assert finding.epochs == (4, 8)
    assert "turned up after epoch 4" in finding.evidence and "accuracy gap" in finding.evidence


def test_underfitting():
    frame = history(6, train__acc1=[0.2, 0.3, 0.35, 0.38, 0.4, 0.41], val__acc1=[0.2, 0.29, 0.34, 0.37, 0.39, 0.4])
    assert "under-fitting" in kinds(frame)


def test_loss_up_with_accuracy_up():
    frame = history(6, val__loss=[1.0, 0.8, 0.7, 0.75, 0.8, 0.9], val__acc1=[0.5, 0.6, 0.65, 0.66, 0.68, 0.7])
    (finding,) = [f for f in diagnose(frame, None, 10) if f.kind == "loss up with accuracy up"]
    assert finding.epochs == (4, 6) and "label_smoothing" in finding.suggestion


def test_exploding_and_vanishing_gradients():
    spike = history(6, grad_norm_max=[4, 4, 80, 4, 4, 4])
    (finding,) = [f for f in diagnose(spike, None, 10) if f.kind == "exploding gradients"]
    assert finding.epochs == (3, 3) and "grad_clip" in finding.suggestion
    blown = history(6, grad_norm=[2, 1, 1, 30, 40, 40], grad_norm_max=[4, 2, 2, 60, 80, 80])
    (finding,) = [f for f in diagnose(blown, None, 10) if f.kind == "exploding gradients"]
    assert finding.epochs == (4, 6) and "30x its lowest before" in finding.evidence
    # The quickstart's real curve: norms shrink 27x as the loss falls, the first epoch's steps the largest.
    healthy = history(5, grad_norm=[16.4, 4.43, 2.02, 1.09, 0.60], grad_norm_max=[34.2, 8.16, 3.37, 2.0, 1.23])
    assert "exploding gradients" not in kinds(healthy)
    assert "vanishing gradients" in kinds(history(6, grad_norm=[1e-5] * 6, grad_norm_max=[2e-5] * 6))


def test_schedule_finished_while_improving_and_early_stop():
    lr = [0.1, 0.09, 0.07, 0.05, 0.02, 0.001]
    findings = diagnose(history(6, lr=lr), {"stopped": "early_stopping", "stop_reason": "early stopping: ...",
                                            "best_epoch": 4}, 10)
    assert {f.kind for f in findings if f.severity == "info"} == {"still improving", "early stop"}
    assert not [f for f in findings if f.severity == "warning"]


def test_finding_line_reads_well():
    (finding,) = diagnose(history(5, train__loss=[2.0, 1.5, 1.2, np.nan, np.nan]), None, 10)
    assert finding.line().startswith("[warning] diverged (epochs 4-5): train/loss is not finite from epoch 4.")


@pytest.mark.parametrize("n", [1, 2])
def test_short_runs_do_not_crash(n):
    assert isinstance(diagnose(history(n), None, 10), list)
