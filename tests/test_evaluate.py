"""evaluate, compare and summary: numbers checked against scikit-learn and direct computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image
from sklearn import metrics as sk

from trainlab.commands import evaluate
from trainlab.commands.compare import TILE_DPI, TILE_INCHES, compare
from trainlab.core.errors import CheckpointError
from trainlab.engine.fit import train

from helpers import FAST as SHRUNK
from helpers import assert_one_line, compose, run, shell, write_tiny_imagenet

FAST = [*SHRUNK, "optimizer.lr=0.05", "dataset.val_size=100", "model.width=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny training runs: after 1 epoch and after 3 (different enough to disagree)."""
    root = tmp_path_factory.mktemp("runs")
    train(compose(FAST + ["trainer.epochs=1", "dataset.seed=3"]), root / "early")
    train(compose(FAST + ["trainer.epochs=3", "dataset.seed=3"]), root / "late")
    return root


def test_evaluate_matches_sklearn_and_the_training_run(runs, tmp_path):
    record = evaluate.run(OmegaConf.create({"ckpt": str(runs / "late"), "split": "val"}), tmp_path, overrides=[])
    metrics = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    assert record["checkpoint"].endswith("best.ckpt") and list(metrics) == [
        "val/loss", "val/acc1", "val/acc5", "val/precision", "val/recall", "val/f1", "val/kappa", "val/auroc"]
    pred = pd.read_csv(tmp_path / "predictions.csv")
    assert list(pred.columns) == ["path", "target", "target_name", "pred", "pred_name", "confidence", "top5", "loss",
                                  "correct"]
    y, p = pred["target"], pred["pred"]
    assert metrics["val/acc1"] == pytest.approx(sk.accuracy_score(y, p), abs=1e-6)
    assert metrics["val/f1"] == pytest.approx(sk.f1_score(y, p, average="macro", zero_division=0), abs=1e-5)
    precision = sk.precision_score(y, p, average="macro", zero_division=0)
    assert metrics["val/precision"] == pytest.approx(precision, abs=1e-5)
    assert metrics["val/kappa"] == pytest.approx(sk.cohen_kappa_score(y, p), abs=1e-5)
    assert metrics["val/loss"] == pytest.approx(pred["loss"].mean(), rel=1e-5)
    top5 = [int(t) in map(int, row.split()) for t, row in zip(y, pred["top5"])]
    assert metrics["val/acc5"] == pytest.approx(np.mean(top5), abs=1e-6)
    confusion = pd.read_csv(tmp_path / "confusion.csv", index_col=0).values
    assert np.array_equal(confusion, sk.confusion_matrix(y, p, labels=range(10)))
    # The same checkpoint, the same numbers as the training run's own validation of it.
    best = json.loads((runs / "late" / "summary.json").read_text())["best"]
    for name, value in metrics.items():
        assert value == pytest.approx(best[name], abs=1e-5), name


def test_evaluate_train_split_sees_every_image_in_order(runs, tmp_path):
    evaluate.run(OmegaConf.create({"ckpt": str(runs / "late"), "split": "train"}), tmp_path, overrides=[])
    pred = pd.read_csv(tmp_path / "predictions.csv")
    assert len(pred) == 256 and list(pred["path"]) == [f"fake://train/{i}" for i in range(256)]
    assert "train/acc1" in json.loads((tmp_path / "metrics.json").read_text())["metrics"]


def test_evaluate_refuses_other_classes(runs, tmp_path):
    with pytest.raises(CheckpointError, match="trained on 10 classes"):
        evaluate.run(OmegaConf.create({"ckpt": str(runs / "late"), "split": "val"}), tmp_path,
                 overrides=["dataset.num_classes=4"])


def test_compare_finds_exactly_the_disagreements(runs, tmp_path):
    result = compare(str(runs / "early"), str(runs / "late"), n=7, out_dir=tmp_path / "cmp")
    a = pd.read_csv(next((runs / "early" / "eval").glob("*/predictions.csv")))
    b = pd.read_csv(next((runs / "late" / "eval").glob("*/predictions.csv")))
    differ = set(a["path"][a["pred"] != b["pred"]])
    found = pd.read_csv(tmp_path / "cmp" / "disagreements.csv")
    assert set(found["path"]) == differ and result["disagreements"] == len(differ) > 7
    a_right, b_right = a["pred"] == a["target"], b["pred"] == b["target"]
    assert result["only_a_right"] == int((a_right & ~b_right).sum())
    assert result["only_b_right"] == int((~a_right & b_right).sum())
    assert result["both_right"] + result["both_wrong"] + result["only_a_right"] + result["only_b_right"] == 100
    for _, row in found.iterrows():
        expected = {(True, True): "both", (True, False): "A", (False, True): "B", (False, False): "neither"}
        assert row["right"] == expected[(row["a_pred"] == row["target"], row["b_pred"] == row["target"])]
    width, height = Image.open(tmp_path / "cmp" / "disagreements.png").size
    assert (width, height) == (5 * TILE_INCHES[0] * TILE_DPI, 2 * TILE_INCHES[1] * TILE_DPI)  # 7 images: 5 + 2
    assert result["shown"] == 7
    # McNemar's exact test on the images only one gets right, by hand: twice the smaller binomial tail at 1/2.
    only_a, only_b = result["only_a_right"], result["only_b_right"]
    tail = sum(math.comb(only_a + only_b, i) for i in range(min(only_a, only_b) + 1)) / 2 ** (only_a + only_b)
    assert result["evidence"]["p_value"] == pytest.approx(min(1.0, 2 * tail))
    assert result["evidence"]["difference"] == pytest.approx(b_right.mean() - a_right.mean())


@pytest.mark.slow
def test_identical_checkpoints_have_no_disagreements(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "compare", str(runs / "late"), str(runs / "late" / "checkpoints" / "best.ckpt"),
                         f"out={tmp_path / 'same'}")
    assert code == 0, err
    assert "no disagreements" in out
    assert json.loads((tmp_path / "same" / "compare.json").read_text())["disagreements"] == 0
    assert not (tmp_path / "same" / "disagreements.png").exists()


@pytest.mark.slow
def test_evaluate_cli_on_the_unlabelled_test_split(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = write_tiny_imagenet(tmp_path / "t", test_images=5)
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *SHRUNK, "dataset=tiny_imagenet", f"dataset.root={root}", "trainer.epochs=1",
                       "dataset.batch_size=4", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    code, _, err = run(capsys, "evaluate", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", "split=test")
    assert code == 0, err
    out = next((run_dir / "eval").glob("last-test-*"))  # beside the checkpoint by default
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == 5 and "target" not in pred
    assert set(pred["pred_name"]) <= {f"name of n0{k}, alias" for k in (1, 2, 3)}
    assert json.loads((out / "metrics.json").read_text())["metrics"] == {}
    assert_one_line(*shell("evaluate", f"ckpt={root / 'wnids.txt'}"), "not a loadable trainlab checkpoint")


@pytest.mark.slow
def test_summary_lists_resnet18_layers_with_their_shapes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "summary", "model=resnet18", "dataset=fake", "dataset.image_size=64",
                       "dataset.batch_size=2", "num_classes=200", f"hydra.run.dir={tmp_path}")
    assert code == 0, err
    text = (tmp_path / "summary.txt").read_text()
    expected = {"Conv2d (conv1)": "[2, 64, 32, 32]", "MaxPool2d (maxpool)": "[2, 64, 16, 16]",
                "Sequential (layer1)": "[2, 64, 16, 16]", "Sequential (layer2)": "[2, 128, 8, 8]",
                "Sequential (layer3)": "[2, 256, 4, 4]", "Sequential (layer4)": "[2, 512, 2, 2]",
                "AdaptiveAvgPool2d (avgpool)": "[2, 512, 1, 1]", "Linear (fc)": "[2, 200]"}
    lines = text.splitlines()
    for layer, shape in expected.items():
        assert any(layer in line and shape in line for line in lines), layer
    assert "Total params: 11,279,112" in text  # resnet18 with a 200-way head
    assert "Total mult-adds" in text and list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    code, out, _ = run(capsys, "summary", "model=resnet18", "model.small_stem=true", "dataset=fake",
                       "dataset.image_size=64", "dataset.batch_size=1", "num_classes=200",
                       f"hydra.run.dir={tmp_path / 'small'}")
    assert code == 0
    assert any("(layer4)" in ln and "[1, 512, 8, 8]" in ln for ln in out.splitlines())
