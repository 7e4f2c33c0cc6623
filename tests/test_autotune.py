"""trainer.autotune: `auto` precision and memory format chosen by measuring, cached per machine and model,
without touching the run's weights or random streams. Timings are injected: no test depends on this CPU."""

from __future__ import annotations

import json

import pytest
import torch

from trainlab.engine import autotune
from trainlab.engine.autotune import Candidate, Workload, candidates, decide, pick
from trainlab.engine.fit import train
from trainlab.models import small_cnn

from helpers import FAST, compose

FP32, FP32_CL = Candidate("32", False), Candidate("32", True)
BF16, BF16_CL = Candidate("bf16-mixed", False), Candidate("bf16-mixed", True)
MODEL = {"_target_": "trainlab.models.small_cnn", "width": 8}


@pytest.fixture(autouse=True)
def own_decisions(tmp_path, monkeypatch):
    """Each test its own cache folder: a decision cached by one test must not answer another's."""
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path / "cache"))


def make_model():
    return small_cnn(num_classes=3, width=8, dropout=0.0, weights=None, in_channels=3)


WORK = Workload((3, 16, 16), 3, 8)  # the timed workload of the tests below


def timings(speeds: dict[Candidate, float], calls: list | None = None):
    """A stand-in for measure_step that reports the given images/s (and records what it was asked)."""
    def measure(make, candidate, device, work, best=0.0):
        if calls is not None:
            calls.append(candidate)
        return speeds[candidate]
    return measure


def test_candidates_are_what_the_settings_leave_open():
    assert candidates("cpu", "auto", "auto") == [FP32, FP32_CL, BF16, BF16_CL]
    assert candidates("cuda:0", "auto", "false")[-1] == Candidate("16-mixed", False)
    assert candidates("cpu", "32", "auto") == [FP32, FP32_CL]
    assert candidates("cpu", "bf16-mixed", "true") == [BF16_CL]


@pytest.mark.parametrize("speeds, expected", [
    ({FP32: 150, FP32_CL: 160, BF16: 140, BF16_CL: 138}, FP32_CL),   # Xeon without AMX: bf16 is slower
    ({FP32: 100, FP32_CL: 110, BF16: 170, BF16_CL: 200}, BF16_CL),   # native bf16: 1.8x
    ({FP32: 100, FP32_CL: 101, BF16: 102, BF16_CL: 99}, FP32),       # a tie goes to fp32, contiguous
    ({FP32: 100, FP32_CL: 50, BF16: 10, BF16_CL: 5}, FP32),
])
def test_the_fastest_wins_and_ties_go_to_the_safer_choice(speeds, expected):
    assert pick(speeds) == expected


def test_the_decision_is_cached_per_model_and_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path))
    calls: list = []
    measure = timings({FP32: 100, FP32_CL: 180}, calls)
    first = decide(make_model, MODEL, torch.device("cpu"), [FP32, FP32_CL], WORK, measure=measure)
    assert first.choice == FP32_CL and not first.cached and calls == [FP32, FP32_CL]
    again = decide(make_model, MODEL, torch.device("cpu"), [FP32, FP32_CL], WORK, measure=measure)
    assert again.choice == FP32_CL and again.cached and len(calls) == 2  # no new measurement
    decide(make_model, {**MODEL, "width": 16}, torch.device("cpu"), [FP32, FP32_CL], WORK,
           measure=measure)
    decide(make_model, MODEL, torch.device("cpu"), [FP32, FP32_CL], Workload((3, 16, 16), 3, 4), measure=measure)
    assert len(calls) == 6  # another model, another batch: measured again
    stored = json.loads((tmp_path / "autotune.json").read_text())
    assert len(stored) == 3 and all(e["choice"] == FP32_CL.label for e in stored.values())


def test_a_real_measurement_leaves_the_random_streams_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path))
    torch.manual_seed(7)
    before = torch.get_rng_state()
    decision = decide(make_model, MODEL, torch.device("cpu"), [FP32, FP32_CL], WORK)
    assert torch.equal(torch.get_rng_state(), before)
    assert set(decision.speeds) == {FP32.label, FP32_CL.label} and all(v > 0 for v in decision.speeds.values())


@pytest.mark.slow  # seconds of training: in the full suite, not the editing subset
def test_a_tuned_run_equals_a_run_given_the_same_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune, "measure_step", timings({FP32: 50, FP32_CL: 100}))
    args = FAST + ["trainer.epochs=1", "dataset.train_size=64", "dataset.val_size=16"]
    train(compose(args + ["trainer.channels_last=auto"]), tmp_path / "tuned")
    train(compose(args + ["trainer.channels_last=true"]), tmp_path / "explicit")
    run = json.loads((tmp_path / "tuned" / "run.json").read_text())["runtime"]
    assert run["channels_last"] is True and run["autotune"]["images_per_s"] == {FP32.label: 50, FP32_CL.label: 100}
    assert run["reasons"]["channels_last"].startswith("autotune: fastest training steps")
    tuned = torch.load(tmp_path / "tuned" / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    explicit = torch.load(tmp_path / "explicit" / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    assert all(torch.equal(tuned[k], explicit[k]) for k in explicit)


@pytest.mark.slow
def test_autotune_false_never_measures(tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("measured although trainer.autotune=false")

    monkeypatch.setattr(autotune, "measure_step", never)
    train(compose(FAST + ["trainer.epochs=1", "dataset.train_size=64", "dataset.val_size=16",
                          "trainer.channels_last=auto", "trainer.autotune=false"]), tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())["runtime"]
    assert run["autotune"] is None and run["channels_last"] is True  # the flag-based choice: channels-last on


@pytest.mark.slow
def test_a_resumed_run_keeps_its_choice_and_measures_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(autotune, "measure_step", timings({FP32: 50, FP32_CL: 100}))
    args = FAST + ["dataset.train_size=64", "dataset.val_size=16", "trainer.channels_last=auto"]
    train(compose(args + ["trainer.epochs=1"]), tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["speed"] == {"precision": "32", "channels_last": True,
                                                                 "compile": False}

    def never(*args, **kwargs):
        raise AssertionError("a resumed run measured again")

    monkeypatch.setattr(autotune, "measure_step", never)
    (tmp_path / "cache-gone").mkdir()
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path / "cache-gone"))  # the cached decision is gone too
    with caplog.at_level("INFO", logger="trainlab.engine.build"):
        train(compose(args + ["trainer.epochs=2"]), tmp_path / "run", resumed_from=str(ckpt))
    assert "precision=32 channels_last=true, as the run was trained until now" in caplog.text


class _Slow(torch.nn.Module):
    """A model whose every forward takes 50 ms, whatever the batch: it counts its forwards."""

    def __init__(self):
        super().__init__()
        self.fc, self.forwards = torch.nn.Linear(3 * 4 * 4, 10), 0

    def forward(self, x):
        import time

        self.forwards += 1
        time.sleep(0.05)
        return self.fc(x.flatten(1))


def test_a_cpu_candidate_far_slower_than_the_best_is_dropped_after_a_two_image_probe():
    made = []

    def make():
        made.append(_Slow())
        return made[-1]

    work = Workload((3, 4, 4), 10, batch=16)
    # 2 images in 50 ms are 40 images/s: hopeless against 1000, so only the probe ran and its rate is returned.
    # (The rates depend on the machine's load: what is checked is which steps ran.)
    rate = autotune.measure_step(make, Candidate("32", False), torch.device("cpu"), work, best=1000.0)
    assert made[-1].forwards == 1 and rate * autotune.PROBE_HOPELESS < 1000
    # Against 100 it may still win: the probe, the warm-up and the timed steps all run.
    autotune.measure_step(make, Candidate("32", False), torch.device("cpu"), work, best=100.0)
    assert made[-1].forwards == 1 + autotune.WARMUP_STEPS + autotune.STEPS
    autotune.measure_step(make, Candidate("32", False), torch.device("cpu"), work)  # the first candidate: no probe
    assert made[-1].forwards == autotune.WARMUP_STEPS + autotune.STEPS
