"""Checkpoints, exact resume, early stopping and faults (signals, kill -9, NaN, bad files, full disk)."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainlab.commands.train import train_command
from trainlab.core.errors import CheckpointError, DataError, TrainlabError
from trainlab.engine.fit import train
from trainlab.record.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint

from helpers import FAST as SHRUNK
from helpers import (
    LONGER_STEPS,
    TIMING,
    assert_one_line,
    compose,
    run,
    shell,
    start_cli,
    wait_for,
    write_tiny_imagenet,
)

FAST = [*SHRUNK, "trainer.log_every_n_steps=4", "model.dropout=0.2", "optimizer.lr=0.05"]


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def metric_rows(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING)


@pytest.mark.slow
def test_four_plus_four_epochs_equal_eight_straight(tmp_path):
    schedule = ["scheduler=multistep", "scheduler.milestones=[3,6]"]  # an lr schedule that does not depend on epochs
    train(compose(FAST + schedule + ["trainer.epochs=8"]), tmp_path / "straight")
    train(compose(FAST + schedule + ["trainer.epochs=4"]), tmp_path / "split")
    assert len(pd.read_csv(tmp_path / "split" / "metrics.csv")) == 4
    train_command(compose(FAST + schedule + ["trainer.epochs=8", f"resume={tmp_path / 'split'}"]), tmp_path / "unused",
                  overrides=["trainer.epochs=8"])
    assert not (tmp_path / "unused").exists()  # the resumed run continued in its own directory
    assert same_weights(weights(tmp_path / "straight"), weights(tmp_path / "split"))
    pd.testing.assert_frame_equal(metric_rows(tmp_path / "straight"), metric_rows(tmp_path / "split"))
    run = json.loads((tmp_path / "split" / "run.json").read_text())
    assert run["resumes"][0]["changed"] == ["trainer.epochs=8"]
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["epochs_run"] == 8


def test_checkpoint_contents_load_weights_only(tmp_path):
    train(compose(FAST + ["trainer.epochs=2", "checkpoint.every_n_epochs=1", "checkpoint.keep=1"]), tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["best.ckpt", "epoch_002.ckpt", "last.ckpt"]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "step", "best", "early_stopping", "rng",
                "classes", "class_names", "config", "history", "trainlab_version", "torch_version"):
        assert key in ckpt, key
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"} and len(ckpt["history"]) == 2
    assert ckpt["config"]["trainer"]["epochs"] == 2


def test_pickled_code_is_refused_and_never_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.ckpt"
    torch.save({"format": "trainlab-checkpoint-v1", "model": Evil()}, path)
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(path)
    assert_one_line(*shell("train", f"resume={path}"), "pickled")
    assert not marker.exists()


@pytest.mark.slow  # seconds of training: in the full suite, not the editing subset
def test_truncated_and_foreign_files_are_refused(tmp_path):
    train(compose(FAST + ["trainer.epochs=1"]), tmp_path)
    good = tmp_path / "checkpoints" / "last.ckpt"
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a trainlab checkpoint"):
        load_checkpoint(foreign)


@pytest.mark.slow  # seconds of training: in the full suite, not the editing subset
def test_mismatched_resumes_are_refused(tmp_path):
    train(compose(FAST + ["trainer.epochs=1"]), tmp_path / "run")
    with pytest.raises(CheckpointError, match="picks a config group option"):
        train_command(compose(FAST + [f"resume={tmp_path / 'run'}", "model=mlp"]), tmp_path, overrides=["model=mlp"])
    with pytest.raises(CheckpointError, match="model cannot change"):
        train_command(compose(FAST + [f"resume={tmp_path / 'run'}"]), tmp_path, overrides=["model.width=8"])
    with pytest.raises(CheckpointError, match="trained on 10 classes .* data has 5"):
        train_command(compose(FAST + [f"resume={tmp_path / 'run'}"]), tmp_path, overrides=["dataset.num_classes=5"])


@pytest.mark.slow
def test_model_weights_starts_a_new_run_from_a_checkpoint(tmp_path):
    from trainlab.core.runtime import resolve_runtime
    from trainlab.engine.build import build_model

    train(compose(FAST + ["trainer.epochs=2"]), tmp_path / "a")
    source = tmp_path / "a" / "checkpoints" / "last.ckpt"
    cfg = compose(FAST + ["trainer.epochs=1", f"model.weights={source}"])
    runtime = resolve_runtime("cpu", "32", "false", "auto", False)
    model = build_model(cfg, 10, [f"class{k:03d}" for k in range(10)], runtime)
    assert same_weights(model.state_dict(), load_checkpoint(source)["model"])
    fresh = train(compose(FAST + ["trainer.epochs=1"]), tmp_path / "fresh")
    warm = train(cfg, tmp_path / "b")
    assert warm["train/loss"] < fresh["train/loss"]  # it trained on from where run a ended
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "last.ckpt")["epoch"] == 1  # a new run, epoch 1


@pytest.mark.slow
def test_early_stopping_records_why_and_keeps_every_epoch(tmp_path):
    cfg = compose(FAST + ["trainer.epochs=6", "early_stopping.enabled=true", "early_stopping.monitor=val/acc1",
                          "early_stopping.mode=max", "early_stopping.patience=2", "early_stopping.min_delta=2.0"])
    train(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "early_stopping" and summary["epochs_run"] == 3
    assert "has not improved by more than 2 for 2 epochs (best" in summary["stop_reason"]
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 3


def test_resume_by_date_and_latest(tmp_path):
    outputs = tmp_path / "outputs"
    payload = {"epoch": 1}
    runs = {"2026-01-02/10-00-00": 3, "2026-01-02/09-00-00": 1, "2026-01-03/08-00-00": 2}
    for name, age_rank in runs.items():
        ckpt = outputs / name / "checkpoints" / "last.ckpt"
        save_checkpoint(ckpt, payload)
        stamp = time.time() - 1000 * age_rank  # rank 1 is the newest file
        os.utime(ckpt, (stamp, stamp))
    assert find_checkpoint("latest", outputs) == outputs / "2026-01-02/09-00-00/checkpoints/last.ckpt"
    assert find_checkpoint("2026-01-03", outputs) == outputs / "2026-01-03/08-00-00/checkpoints/last.ckpt"
    interrupted = outputs / "2026-01-03/08-00-00/checkpoints/interrupted.ckpt"
    save_checkpoint(interrupted, payload)
    assert find_checkpoint("2026-01-03", outputs) == interrupted  # the newer of interrupted and last
    assert find_checkpoint(str(outputs / "2026-01-02/10-00-00"), outputs).name == "last.ckpt"
    with pytest.raises(CheckpointError, match="no run with a checkpoint"):
        find_checkpoint("2025-12-31", outputs)
    with pytest.raises(CheckpointError, match="no such checkpoint file or run directory"):
        find_checkpoint("nonsense", outputs)


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    save_checkpoint(path, {"epoch": 1})

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(TrainlabError, match="No space left on device; free some disk space"):
        save_checkpoint(path, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.slow  # seconds of training: in the full suite, not the editing subset
def test_corrupt_jpeg_can_be_skipped_and_is_reported(tmp_path):
    root = write_tiny_imagenet(tmp_path / "t")
    (root / "train" / "n02" / "images" / "n02_3.JPEG").write_bytes(b"garbage")
    cfg = compose(["dataset=tiny_imagenet", f"dataset.root={root}", "dataset.batch_size=4", "model=small_cnn",
                   "trainer.epochs=1", "trainer.precision=32"])
    with pytest.raises(DataError, match="n02_3.JPEG.*dataset.skip_bad_images=true"):
        train(cfg, tmp_path / "a")
    cfg.dataset.skip_bad_images = True
    train(cfg, tmp_path / "b")
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["data"]["skipped_images"] == {"train": 1} and run["data"]["sizes"]["train"] == 17


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, capsys, monkeypatch):
    # The stopped run is a process of its own (the signal, the exit status); the run never stopped and the resume
    # run in this one, with the same thread count, so their numbers are the same bit for bit.
    monkeypatch.chdir(tmp_path)
    args = FAST + LONGER_STEPS + ["dataset.train_size=800", "trainer.epochs=3", "trainer.log_every_n_steps=2",
                                  "trainer.threads=1"]
    code, _, err = run(capsys, "train", *args, f"hydra.run.dir={tmp_path / 'straight'}")
    assert code == 0, err
    run_dir, log = tmp_path / "stopped", tmp_path / "stopped.log"
    proc = start_cli(args + [f"hydra.run.dir={run_dir}"], tmp_path, log)
    wait_for(log, "epoch 2 train 7/", proc)  # progress lines come every 2 global steps: odd batches here
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert "continue with: trainlab train resume=" in log.read_text()
    ckpt = load_checkpoint(run_dir / "checkpoints" / "interrupted.ckpt")
    assert ckpt["epoch"] == 1 and ckpt["position"]["epoch"] == 2
    assert 6 <= ckpt["position"]["ranks"][0]["tally"]["batches"] < 25
    assert json.loads((run_dir / "summary.json").read_text())["stopped"] == "interrupted"
    code, _, err = run(capsys, "train", f"resume={run_dir}")
    assert code == 0, err
    assert not (run_dir / "checkpoints" / "interrupted.ckpt").exists()
    assert same_weights(weights(tmp_path / "straight"), weights(run_dir))
    pd.testing.assert_frame_equal(metric_rows(tmp_path / "straight"), metric_rows(run_dir))
    assert (run_dir / ".hydra" / "config.yaml").is_file() and list((run_dir / ".hydra").glob("resume-*"))


def test_a_stop_after_an_epochs_last_batch_saves_last_ckpt_and_the_resume_runs_the_rest(tmp_path, monkeypatch):
    # A signal that lands after the epoch's last training batch (while it validates, say) has nothing mid-epoch to
    # keep: the epoch is recorded, last.ckpt saved, and no interrupted.ckpt is written (a sweep stopped by SIGTERM
    # has such jobs beside ones stopped mid-epoch).
    from trainlab.core.errors import RunStopped
    from trainlab.engine import fit

    real_row, calls = fit.epoch_row, []

    def row_then_signal(run, tally):
        calls.append(tally.batches)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_row(run, tally)

    monkeypatch.setattr(fit, "epoch_row", row_then_signal)
    with pytest.raises(RunStopped) as stopped:
        train(compose(FAST), tmp_path)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "interrupted" and summary["stop_reason"] == "SIGTERM at the end of epoch 1; saved " \
                                                                            "last.ckpt"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["epoch"] == 1
    monkeypatch.undo()
    train_command(compose(FAST + [f"resume={tmp_path}"]), tmp_path / "unused", overrides=[])
    assert list(pd.read_csv(tmp_path / "metrics.csv")["epoch"]) == [1, 2]
    assert json.loads((tmp_path / "summary.json").read_text())["stopped"] == "completed"


def test_a_stop_while_the_run_writes_its_summary_lets_it_finish(tmp_path, monkeypatch, caplog):
    from trainlab.record import recorder

    real = recorder.diagnose

    def signal_then_diagnose(*args):
        os.kill(os.getpid(), signal.SIGTERM)  # every epoch ran; summary.json, plots and report are being written
        return real(*args)

    monkeypatch.setattr(recorder, "diagnose", signal_then_diagnose)
    train(compose(FAST), tmp_path)  # returns: no RunStopped
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["epochs_run"] == 2
    assert (tmp_path / "plots" / "loss.png").is_file() and (tmp_path / "tensorboard").is_dir()
    assert "SIGTERM received: every epoch has run; the run ends once its summary and plots are written" in caplog.text


@pytest.mark.slow
def test_kill_9_never_damages_a_checkpoint(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # resnet18 on tiny images: writing its 45 MB checkpoints takes most of each epoch, so the kills
    # below land inside checkpoint writes most of the time.
    args = ["dataset=fake", "dataset.image_size=16", "dataset.train_size=32", "dataset.val_size=8", "model=resnet18",
            "trainer.epochs=40", "trainer.precision=32", "checkpoint.every_n_epochs=1", "checkpoint.keep=2",
            "trainer.histogram_every_n_epochs=0"]
    run_dir = tmp_path / "run"
    rng = random.Random(0)
    for attempt in range(2):
        log = tmp_path / f"attempt{attempt}.log"
        extra = [f"hydra.run.dir={run_dir}"] if attempt == 0 else [f"resume={run_dir}"]
        proc = start_cli(args + extra, tmp_path, log)
        wait_for(log, f"epoch {2 * attempt + 3}/40", proc)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for ckpt in (run_dir / "checkpoints").glob("*.ckpt"):
            load_checkpoint(ckpt)  # every visible checkpoint is whole
    code, _, err = run(capsys, "train", f"resume={run_dir}", "trainer.epochs=7")
    assert code == 0, err
    frame = pd.read_csv(run_dir / "metrics.csv")
    assert list(frame["epoch"]) == list(range(1, 8))  # no gap, no duplicate


@pytest.mark.slow
def test_checkpoints_without_optimizer_are_smaller_and_last_still_resumes(tmp_path):
    cfg = compose(FAST + ["trainer.epochs=2", "checkpoint.every_n_epochs=1", "checkpoint.save_optimizer=false",
                          "optimizer=adam", "scheduler=step"])  # adam: optimizer state as large as the weights
    train(cfg, tmp_path)
    folder = tmp_path / "checkpoints"
    last, best, periodic = (torch.load(folder / n, weights_only=True)
                            for n in ("last.ckpt", "best.ckpt", "epoch_002.ckpt"))
    for slim in (best, periodic):
        assert "optimizer" not in slim and "rng" not in slim and set(slim["model"]) == set(last["model"])
    assert "optimizer" in last and (folder / "best.ckpt").stat().st_size < 0.6 * (folder / "last.ckpt").stat().st_size
    with pytest.raises(CheckpointError, match="holds no training state to resume"):
        train_command(compose(FAST + [f"resume={folder / 'best.ckpt'}"]), tmp_path, overrides=[])
    train_command(compose(FAST + ["trainer.epochs=3", f"resume={tmp_path}"]), tmp_path, overrides=["trainer.epochs=3"])
    assert len(pd.read_csv(tmp_path / "metrics.csv")) == 3
