"""The recipe switches: MixUp/CutMix, RandAugment/TrivialAugment, random erasing, gradient accumulation and
the EMA of the weights. Each does what it says, checked against an independent computation."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from trainlab.augment import random_erase
from trainlab.core.config import component

from helpers import FAST, TIMING, assert_one_line, run, shell


def _batch(n=8, c=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, size, size, generator=g), torch.arange(n) % 5


def test_mixup_blends_images_and_targets_by_the_same_lambda():
    x, y = _batch()
    aug = component("augment", "none", mean=[0.5] * 3, std=[0.2] * 3, channels=None, mixup_alpha=0.4)
    torch.manual_seed(0)
    mixed, soft = aug.mix(x, y, 5, torch.Generator().manual_seed(1))
    assert torch.allclose(soft.sum(1), torch.ones(8))
    lam = soft[0, y[0]].item() if y[0] != y[-1] else None
    assert lam is not None and 0 <= lam <= 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * x.roll(1, 0), atol=1e-6)  # paired with the rolled batch


def test_cutmix_pastes_one_box_whose_area_is_the_targets_share():
    x, y = _batch(size=32)
    aug = component("augment", "none", mean=[0.5] * 3, std=[0.2] * 3, channels=None, cutmix_alpha=1.0)
    torch.manual_seed(3)
    mixed, soft = aug.mix(x, y, 5, torch.Generator().manual_seed(2))
    from_other = (mixed != x).any(1)  # pixels taken from the rolled batch (random values never coincide)
    assert torch.equal(mixed[from_other.unsqueeze(1).expand_as(x)], x.roll(1, 0)[from_other.unsqueeze(1).expand_as(x)])
    share = from_other.float().mean(dim=(1, 2))
    assert torch.allclose(share, share[0].expand(8))  # the same box in every image
    rows, cols = from_other[0].nonzero(as_tuple=True)
    if len(rows):  # a rectangle: its bounding box is all pasted
        assert from_other[0, rows.min():rows.max() + 1, cols.min():cols.max() + 1].all()
    assert soft[0, y[0]].item() == pytest.approx(1 - share[0].item(), abs=1e-6)


def test_random_erasing_zeroes_one_rectangle_per_chosen_image():
    x = torch.randn(64, 3, 20, 20, generator=torch.Generator().manual_seed(0)) + 10  # never 0 by chance
    assert torch.equal(random_erase(x, 0.0, torch.Generator().manual_seed(0)), x)
    erased = random_erase(x, 1.0, torch.Generator().manual_seed(0))
    for image in erased:
        zero = (image == 0).all(0)
        rows, cols = zero.nonzero(as_tuple=True)
        box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all() and box.numel() == zero.sum()  # one filled rectangle, nothing outside it
        assert 0.02 * 400 * 0.5 <= box.numel() <= 0.33 * 400 * 1.5  # its area as torchvision draws it (rounded)
    half = random_erase(x, 0.5, torch.Generator().manual_seed(1))
    assert 16 < int((half == 0).flatten(1).any(1).sum()) < 48


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_auto_augment_changes_images_repeatably(policy):
    images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    aug = component("augment", "none", mean=[0.5] * 3, std=[0.2] * 3, channels=None, auto_augment=policy)
    plain = component("augment", "none", mean=[0.5] * 3, std=[0.2] * 3, channels=None).train(images)
    torch.manual_seed(5)
    a = aug.train(images)
    torch.manual_seed(5)
    b = aug.train(images)
    assert torch.equal(a, b) and a.shape == plain.shape
    assert int((a != plain).flatten(1).any(1).sum()) >= 8  # most images got an op that changed them


@pytest.mark.slow
def test_switches_are_refused_with_one_line(capsys):
    assert_one_line(*shell("train", *FAST, "augment.auto_augment=autoaugment"), "augment.auto_augment",
                    "randaugment")
    assert_one_line(*shell("train", *FAST, "augment.mixup_alpha=0.2", "loss._target_=torch.nn.MultiMarginLoss",
                         "~loss.label_smoothing"), "soft targets", "loss=cross_entropy")
    assert_one_line(*shell("train", *FAST, "checkpoint.monitor=val_ema/acc1"), "trainer.ema_decay")
    assert_one_line(*shell("train", *FAST, "trainer.accumulate_grad_batches=0"), "accumulate_grad_batches")


@pytest.mark.slow
def test_accumulated_small_batches_equal_one_big_batch(tmp_path, capsys):
    """An MLP (no BatchNorm, no dropout), no augmentation: 4 batches of 16 accumulated are one batch of 64."""
    common = [*FAST, "model=mlp", "augment=none", "trainer.epochs=2", "trainer.histogram_every_n_epochs=0"]
    code, _, err = run(capsys, "train", *common, "dataset.batch_size=64", f"hydra.run.dir={tmp_path / 'big'}")
    assert code == 0, err
    code, _, err = run(capsys, "train", *common, "dataset.batch_size=16", "trainer.accumulate_grad_batches=4",
                       f"hydra.run.dir={tmp_path / 'acc'}")
    assert code == 0, err
    big = torch.load(tmp_path / "big/checkpoints/last.ckpt", weights_only=True)
    acc = torch.load(tmp_path / "acc/checkpoints/last.ckpt", weights_only=True)
    assert big["step"] == acc["step"] == 2 * 256 // 64
    for key, value in big["model"].items():
        assert torch.allclose(value, acc["model"][key], atol=2e-6), key
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv").drop(columns=TIMING) for d in ("big", "acc"))
    pd.testing.assert_frame_equal(a, b, atol=1e-5, rtol=1e-4)  # same loss, accuracy, gradient norm and lr


@pytest.mark.slow
def test_ema_weights_are_the_moving_average_and_are_validated_and_checkpointed(tmp_path, capsys):
    """One optimizer step per epoch: the EMA after epoch 2 is d * weights(1) + (1 - d) * weights(2)."""
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *FAST, "trainer.ema_decay=0.7", "dataset.batch_size=256",
                       "checkpoint.every_n_epochs=1", "checkpoint.monitor=val_ema/acc1", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    first = torch.load(run_dir / "checkpoints/epoch_001.ckpt", weights_only=True)
    second = torch.load(run_dir / "checkpoints/epoch_002.ckpt", weights_only=True)
    assert int(second["ema"]["n_averaged"]) == 2
    for key, value in second["model"].items():
        if value.is_floating_point():
            expected = 0.7 * first["model"][key] + 0.3 * value
            assert torch.allclose(second["ema"][f"module.{key}"], expected, atol=1e-6), key
    history = pd.read_csv(run_dir / "metrics.csv")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["monitor"] == "val_ema/acc1"
    # evaluate weights=ema scores the averaged weights of best.ckpt exactly as training validated them.
    code, out, err = run(capsys, "evaluate", f"ckpt={run_dir}", "weights=ema")
    assert code == 0, err
    metrics = json.loads(next((run_dir / "eval").glob("*/metrics.json")).read_text())
    best = history[history["epoch"] == summary["best_epoch"]].iloc[0]
    assert metrics["weights"] == "ema"
    assert metrics["metrics"]["val/acc1"] == pytest.approx(best["val_ema/acc1"])
    assert metrics["metrics"]["val/loss"] == pytest.approx(best["val_ema/loss"], rel=1e-5)


@pytest.mark.slow
def test_every_switch_trains_and_is_recorded(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *FAST, "augment=standard", "augment.auto_augment=randaugment",
                       "augment.random_erasing=0.25", "augment.mixup_alpha=0.2", "augment.cutmix_alpha=1.0",
                       "loss.label_smoothing=0.1", "trainer.accumulate_grad_batches=2", "trainer.ema_decay=0.99",
                       f"hydra.run.dir={run_dir}")
    assert code == 0, err
    history = pd.read_csv(run_dir / "metrics.csv")
    assert history["step"].tolist() == [4, 8]  # 8 batches of 32 per epoch, a step every 2
    assert history["val_ema/acc1"].notna().all()
