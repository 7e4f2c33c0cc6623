"""Training end to end: the in-process `train()` on synthetic data (fast) and the CLI with the real
ResNet-18 on a generated Tiny-ImageNet tree (slow)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from sklearn import metrics as sk

from trainlab.core.columns import COLUMNS
from trainlab.core.config import TargetSettings
from trainlab.core.errors import RunStopped
from trainlab.engine.fit import time_to_target, train
from trainlab.models import small_cnn

from helpers import FAST as SHRUNK
from helpers import REPO, assert_one_line, blown_checkpoint, compose, run, run_cli, shell, write_tiny_imagenet

FAST = [*SHRUNK, "trainer.log_every_n_steps=2", "trainer.histogram_every_n_epochs=1", "optimizer.lr=0.05",
        "model.width=16"]


def test_train_writes_the_full_record(tmp_path):
    cfg = compose([*FAST, "target.metric=val/loss", "target.mode=min", "target.value=1e9"])
    last = train(cfg, tmp_path)
    frame = pd.read_csv(tmp_path / "metrics.csv")
    assert list(frame.columns) == COLUMNS and list(frame["epoch"]) == [1, 2]
    assert frame.notna().all().all(), frame.isna().sum()
    assert list(frame["step"]) == [8, 16]  # 256 train images / batch 32
    assert (frame["throughput/train_ips"] > 0).all() and (frame["grad_norm_max"] >= frame["grad_norm"]).all()
    assert frame["val/acc1"].iloc[-1] == pytest.approx(last["val/acc1"])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["epochs_run"] == 2
    assert summary["best_epoch"] == int(frame["val/acc1"].idxmax()) + 1
    # Any loss is <= 1e9: the target is reached at epoch 1, after that epoch's train and val seconds in the CSV.
    reached = summary["time_to_target"]
    assert reached["epoch"] == 1 and reached["reached"] == pytest.approx(frame["val/loss"].iloc[0])
    assert reached["train_s"] == pytest.approx(frame["time/train_s"].iloc[0] + frame["time/val_s"].iloc[0])
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["runtime"]["precision"] == "32" and "threads" in run["runtime"]["reasons"]
    confusion = pd.read_csv(tmp_path / "confusion" / "val_epoch002.csv", index_col=0)
    assert confusion.shape == (10, 10) and confusion.values.sum() == 64
    for name in ("loss.png", "accuracy.png", "lr.png"):
        assert (tmp_path / "plots" / name).stat().st_size > 1000


def test_time_to_target_is_the_first_epoch_that_reaches_it():
    rows = [{"epoch": e, "time/train_s": 10.0, "time/val_s": 1.0, "val/acc1": a, "val/loss": loss}
            for e, a, loss in ((1, 0.5, 2.0), (2, float("nan"), 1.0), (3, 0.99, 0.5), (4, 0.995, 0.4))]
    first = time_to_target(rows, TargetSettings("val/acc1", "max", 0.98))
    assert (first["epoch"], first["train_s"], first["reached"]) == (3, 33.0, 0.99)
    assert time_to_target(rows, TargetSettings("val/loss", "min", 1.0))["epoch"] == 2
    assert time_to_target(rows, TargetSettings("val/acc1", "max", 0.999))["epoch"] is None
    assert time_to_target(rows, TargetSettings("val/acc1", "max", None)) is None


def test_checkpoint_reproduces_the_recorded_val_metrics(tmp_path):
    """Reload last.ckpt with weights_only=True, predict the val split ourselves, and recompute the
    epoch's val metrics with scikit-learn."""
    cfg = compose(FAST)
    train(cfg, tmp_path)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["classes"][0] == "class000" and ckpt["config"]["seed"] == 0
    model = small_cnn(num_classes=10, width=cfg.model.width, dropout=0.0, weights=None, in_channels=3)
    model.load_state_dict(ckpt["model"])
    model.eval()
    data = instantiate(cfg.dataset)
    data.setup()
    mean = torch.tensor(data.mean).view(1, 3, 1, 1)
    std = torch.tensor(data.std).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((data.splits["val"].images.float() / 255 - mean) / std)
    y = data.splits["val"].labels.numpy()
    pred = logits.argmax(1).numpy()
    row = pd.read_csv(tmp_path / "metrics.csv").iloc[-1]
    assert row["val/acc1"] == pytest.approx(sk.accuracy_score(y, pred), abs=1e-6)
    assert row["val/f1"] == pytest.approx(sk.f1_score(y, pred, average="macro", zero_division=0), abs=1e-5)
    loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).item()
    assert row["val/loss"] == pytest.approx(loss, rel=1e-4)


@pytest.mark.slow
def test_same_seed_same_run(tmp_path):
    a = train(compose(FAST + ["trainer.epochs=1"]), tmp_path / "a")
    b = train(compose(FAST + ["trainer.epochs=1"]), tmp_path / "b")
    assert a["train/loss"] == b["train/loss"] and a["val/loss"] == b["val/loss"]


@pytest.mark.slow
def test_l1_and_grad_clip_change_training(tmp_path):
    base = train(compose(FAST + ["trainer.epochs=1"]), tmp_path / "base")
    l1 = train(compose(FAST + ["trainer.epochs=1", "trainer.l1=0.01"]), tmp_path / "l1")
    assert l1["train/loss"] != base["train/loss"]
    clipped = train(compose(FAST + ["trainer.epochs=1", "trainer.grad_clip=0.01"]), tmp_path / "clip")
    assert clipped["train/loss"] != base["train/loss"]


@pytest.mark.slow  # seconds of training: in the full suite, not the editing subset
def test_non_finite_loss_stops_at_once_and_keeps_the_last_good_checkpoint(tmp_path):
    train(compose(FAST + ["trainer.epochs=1"]), tmp_path)
    good, blown = blown_checkpoint(tmp_path)
    # step 9 (the first of epoch 2) applies the huge update; step 10 is the first to see its result
    with pytest.raises(RunStopped, match="non-finite loss or gradient at epoch 2, step 10;"):
        train(compose(FAST + ["trainer.epochs=3"]), tmp_path, resumed_from=str(blown))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stopped"] == "nan" and summary["epochs_run"] == 2  # the bad epoch is recorded...
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["epoch"] == 1  # ...not saved
    assert torch.equal(after["model"]["0.0.weight"], good["model"]["0.0.weight"])


def test_data_errors_are_one_line_from_the_cli(tmp_path, capsys):
    root = write_tiny_imagenet(tmp_path / "t")
    (root / "val" / "val_annotations.txt").unlink()
    code, out, err = shell("train", "dataset=tiny_imagenet", f"dataset.root={root}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line(code, out, err, "val_annotations.txt does not")
    assert "val_annotations.txt does not" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.slow
def test_multirun_makes_one_directory_per_job(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train", "-m", *SHRUNK, "trainer.epochs=1", "optimizer=sgd,adam",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, err
    for job in ("0", "1"):
        assert len(pd.read_csv(tmp_path / "sweep" / job / "metrics.csv")) == 1


@pytest.mark.slow
def test_cli_trains_real_resnet18_on_the_tiny_imagenet_layout(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root = write_tiny_imagenet(tmp_path / "tiny-imagenet-200", wnids=("n03", "n01", "n02", "n04", "n05"),
                               train_per_class=8, val_per_class=4, modes={("n01", 1): "L", ("n02", 2): "CMYK"})
    run_dir = tmp_path / "run"
    result = run_cli("train", "+experiment=resnet18_tiny", f"dataset.root={root}", "trainer.epochs=2",
                     "dataset.batch_size=16", "lr_schedule.warmup_epochs=1", "trainer.log_every_n_steps=1",
                     "trainer.histogram_every_n_epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    frame = pd.read_csv(run_dir / "metrics.csv")
    assert list(frame.columns) == COLUMNS and list(frame["epoch"]) == [1, 2]
    assert frame.notna().all().all()
    assert frame["lr"].iloc[0] < frame["lr"].iloc[1]  # warm-up epoch first
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    for name in COLUMNS[2:] + ["epoch", "train/loss_step"]:  # `step` is TensorBoard's x axis itself
        assert name in tags, name
    assert [e.value for e in events.Scalars("val/acc1")] == pytest.approx(list(frame["val/acc1"]))
    # Epoch metrics sit at the global step, like train/loss_step, and `epoch` maps the steps back to epochs.
    assert [e.step for e in events.Scalars("val/acc1")] == list(frame["step"])
    assert [(e.step, e.value) for e in events.Scalars("epoch")] == list(zip(frame["step"], [1.0, 2.0]))
    assert max(e.step for e in events.Scalars("train/loss_step")) == frame["step"].iloc[-1]
    assert any(t.startswith("weights/") for t in events.Tags()["histograms"])
    assert events.Tags()["graph"] and "confusion/val" in events.Tags()["images"]
    assert events.PluginTagToContent("hparams")  # hparams with the final metrics
    confusion = pd.read_csv(run_dir / "confusion" / "val_epoch002.csv", index_col=0)
    assert list(confusion.index) == ["n01 name of n01", "n02 name of n02", "n03 name of n03", "n04 name of n04",
                                     "n05 name of n05"]
    assert confusion.values.sum() == 20
    for name in ("loss.png", "accuracy.png", "lr.png", "metrics.png"):
        assert (run_dir / "plots" / name).is_file()
    ckpt = torch.load(run_dir / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["classes"] == ["n01", "n02", "n03", "n04", "n05"]
    assert ckpt["model"]["fc.weight"].shape == (5, 512)  # num_classes came from the data
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped"] == "completed" and summary["runtime"]["device"] == "cpu"
    assert "epoch 2/2" in (run_dir / "train.log").read_text()


@pytest.mark.slow
def test_quickstart_learns_the_real_digits(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", "+experiment=quickstart", f"dataset.root={tmp_path / 'digits'}",
                       "trainer.epochs=2", "target.value=0.8", f"hydra.run.dir={run_dir}")
    assert code == 0, err[-3000:]
    frame = pd.read_csv(run_dir / "metrics.csv")
    assert frame["val/acc1"].max() > 0.8  # ten classes: chance is 0.1; the full 6-epoch recipe reaches ~0.985
    reached = json.loads((run_dir / "summary.json").read_text())["time_to_target"]
    first = int((frame["val/acc1"] >= 0.8).idxmax())
    assert reached["epoch"] == first + 1
    assert reached["train_s"] == pytest.approx((frame["time/train_s"] + frame["time/val_s"])[:first + 1].sum())
    assert f"val/acc1 >= 0.8 at epoch {first + 1}" in (run_dir / "train.log").read_text()
    # scripts/demo.sh ends with this verdict on the same files: reached here, and for a target out of reach the
    # best epoch of metrics.csv (found here with pandas) and where the recipe's margin is measured.
    spec = importlib.util.spec_from_file_location("demo_verdict", REPO / "scripts" / "demo_verdict.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.verdict(run_dir) == (f"trainlab demo: reached val/acc1 >= 0.8 at epoch {first + 1} "
                                     f"({frame['val/acc1'][first]:.4f}) after {reached['train_s']:.0f} s of training")
    missed = tmp_path / "missed"
    missed.mkdir()
    shutil.copy(run_dir / "metrics.csv", missed)
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["time_to_target"] |= {"value": 0.999, "epoch": None, "train_s": None, "reached": None}
    (missed / "summary.json").write_text(json.dumps(summary))
    best = int(frame["val/acc1"].idxmax())
    line = demo.verdict(missed)
    assert line.startswith(f"trainlab demo: val/acc1 did not reach 0.999 (best {frame['val/acc1'][best]:.4f} at "
                           f"epoch {frame['epoch'][best]}); ")
    assert "docs/performance.md, 'How close to the edge that is'" in line
    assert "How close to the edge that is" in (REPO / "docs" / "performance.md").read_text()
