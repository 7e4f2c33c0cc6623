"""`trainlab lr-find`: the LR range test's curve, stopping rule and suggestion."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from trainlab.commands.lr_find import suggest

from helpers import FAST, assert_one_line, run, shell


def test_the_suggestion_is_the_steepest_descent_against_log_lr():
    lrs = np.geomspace(1e-6, 1.0, 61)
    smoothed = 2.0 - np.tanh(np.log10(lrs) + 2.5)  # falls fastest at lr = 10**-2.5
    assert suggest(lrs, smoothed) == int(np.argmin(np.abs(np.log10(lrs) + 2.5)))
    assert suggest(lrs[:2], smoothed[:2]) is None


@pytest.mark.slow  # a few seconds of steps: in the full suite, not the editing subset
def test_lr_find_writes_the_curve_and_suggests_an_lr(tmp_path, capsys):
    out = tmp_path / "lr"
    code, stdout, err = run(capsys, "lr-find", *FAST, "lr_find.num_steps=40", "lr_find.min_lr=1e-5",
                            "lr_find.max_lr=100", f"hydra.run.dir={out}")
    assert code == 0, err
    table = pd.read_csv(out / "lr_find.csv")
    record = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").stat().st_size > 0
    # The schedule: geometric from min_lr, 40 steps to max_lr.
    expected = 1e-5 * (100 / 1e-5) ** (np.arange(len(table)) / 39)
    assert np.allclose(table["lr"], expected, rtol=1e-9)
    # The smoothed curve is the bias-corrected moving average of the raw losses.
    average, smoothed = 0.0, []
    for i, value in enumerate(table["loss"]):
        average = 0.9 * average + 0.1 * value
        smoothed.append(average / (1 - 0.9 ** (i + 1)))
    assert np.allclose(table["smoothed_loss"], smoothed)
    # It stopped at max_lr or when the loss passed 4x its minimum (and not before).
    before = table["smoothed_loss"].iloc[:-1]
    assert (before <= 4 * before.cummin()).all()
    assert len(table) == 40 or table["smoothed_loss"].iloc[-1] > 4 * before.min()
    pick = suggest(table["lr"].to_numpy(), table["smoothed_loss"].to_numpy())
    assert record["suggested_lr"] == pytest.approx(table["lr"].iloc[pick])
    assert f"optimizer.lr={record['suggested_lr']:.3g}" in stdout


@pytest.mark.slow
def test_lr_find_options_are_checked(capsys):
    assert_one_line(*shell("lr-find", *FAST, "lr_find.min_lr=1", "lr_find.max_lr=0.1"), "lr_find.min_lr")
    assert_one_line(*shell("lr-find", *FAST, "lr_find.step=3"), "lr_find.num_steps")


def test_a_fall_after_the_divergence_is_no_suggestion():
    """The loss falls, bottoms out at lr 1e-2, diverges and falls again at ~1 (a diverged model bouncing back):
    the suggestion is the steepest descent before the minimum."""
    lrs = np.geomspace(1e-6, 3.0, 81)
    x = np.log10(lrs)
    smoothed = 2.0 - np.tanh(x + 4) + np.clip(3 * (x + 2), 0, 3) - np.where(x > -0.5, 10 * (x + 0.5), 0).clip(0, 2.5)
    assert smoothed[x > -0.5].min() > smoothed.min() and np.gradient(smoothed, x)[x > -0.5].min() < -5  # it bounces
    pick = suggest(lrs, smoothed)
    assert abs(np.log10(lrs[pick]) + 4) < 0.2
