"""scheduler=wsd (warm-up, stable, decay): its learning rate against the formula written here, and a run extended
with `resume=<run> trainer.epochs=N` equal to one planned that long from the start."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from trainlab.commands.train import train_command
from trainlab.engine.fit import train

from helpers import FAST, TIMING, assert_one_line, compose, run, shell


def expected_factor(t: int, total: int, fraction: float, shape: str, floor: float) -> float:
    """The WSD factor of scheduler step t (after the warm-up) of a schedule `total` steps long, by hand: 1 until the
    last round(fraction * total) steps, then down towards `floor`, which the step after the last would reach."""
    decay = round(fraction * total)
    start = total - decay
    if t < start:
        return 1.0
    p = (t - start + 1) / (decay + 1)
    return floor + (1 - floor) * ((1 - p) if shape == "linear" else (1 + math.cos(math.pi * p)) / 2)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_the_learning_rate_follows_the_trapezoid(tmp_path, shape):
    epochs, warmup, lr = 8, 2, 0.05
    train(compose(FAST + ["scheduler=wsd", f"scheduler.decay={shape}", "scheduler.decay_fraction=0.5",
                          "scheduler.min_factor=0.1", f"lr_schedule.warmup_epochs={warmup}", f"trainer.epochs={epochs}",
                          f"optimizer.lr={lr}"]), tmp_path)
    got = pd.read_csv(tmp_path / "metrics.csv")["lr"].tolist()
    ramp = [lr * (0.01 + (1 - 0.01) * e / warmup) for e in range(warmup)]  # LinearLR from lr/100
    want = ramp + [lr * expected_factor(t, epochs - warmup, 0.5, shape, 0.1) for t in range(epochs - warmup)]
    assert got == pytest.approx(want, rel=1e-6)
    assert (tmp_path / "checkpoints" / "stable.ckpt").is_file()
    stable = torch.load(tmp_path / "checkpoints" / "stable.ckpt", weights_only=True)
    assert stable["epoch"] == warmup + (epochs - warmup) - round(0.5 * (epochs - warmup))  # the last at full lr


def _rows(run_dir):
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING)


@pytest.mark.slow
def test_an_extended_run_equals_one_planned_that_long(tmp_path):
    schedule = FAST + ["scheduler=wsd", "scheduler.decay_fraction=0.5", "lr_schedule.warmup_epochs=1"]
    train(compose(schedule + ["trainer.epochs=7"]), tmp_path / "planned")
    train(compose(schedule + ["trainer.epochs=5"]), tmp_path / "short")
    assert len(pd.read_csv(tmp_path / "short" / "metrics.csv")) == 5  # decayed over epochs 4-5
    train_command(compose(schedule + ["trainer.epochs=7", f"resume={tmp_path / 'short'}"]), tmp_path / "unused",
                  overrides=["trainer.epochs=7"])
    pd.testing.assert_frame_equal(_rows(tmp_path / "planned"), _rows(tmp_path / "short"), rtol=1e-5, atol=1e-6)
    planned = torch.load(tmp_path / "planned" / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    extended = torch.load(tmp_path / "short" / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    assert all(torch.allclose(planned[k].float(), extended[k].float(), rtol=1e-4, atol=1e-6) for k in planned)
    resumes = json.loads((tmp_path / "short" / "run.json").read_text())["resumes"]
    assert resumes[0]["from"].endswith("stable.ckpt")


def test_extending_says_where_it_continues_and_a_cosine_run_is_pointed_to_wsd(tmp_path, capsys):
    run(capsys, "train", *FAST, "scheduler=wsd", "scheduler.decay_fraction=0.5", "trainer.epochs=4",
        f"hydra.run.dir={tmp_path / 'wsd'}")
    code, out, err = run(capsys, "train", f"resume={tmp_path / 'wsd'}", "trainer.epochs=6")
    assert code == 0, err
    assert "continues from" in out + err and "stable.ckpt (epoch 2" in out + err
    run(capsys, "train", *FAST, "scheduler=cosine", f"hydra.run.dir={tmp_path / 'cos'}")
    assert_one_line(*shell("train", f"resume={tmp_path / 'cos'}", "trainer.epochs=4"), "scheduler=wsd")


def test_a_shorter_wsd_run_than_its_stable_checkpoint_is_one_line(tmp_path, capsys):
    run(capsys, "train", *FAST, "scheduler=wsd", "scheduler.decay_fraction=0.25", "trainer.epochs=8",
        f"hydra.run.dir={tmp_path / 'wsd'}")
    assert_one_line(*shell("train", f"resume={tmp_path / 'wsd'}", "trainer.epochs=3"), "stable.ckpt", "epoch 6")
