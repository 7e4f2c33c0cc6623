"""The CUDA path on a real GPU: train -> resume -> evaluate at each mixed precision, and the NaN stop under
fp16's GradScaler. Marked `cuda` and skipped where torch sees no GPU; on a GPU machine: scripts/test.sh -m cuda."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from trainlab.commands import evaluate
from trainlab.commands.train import train_command
from trainlab.core.errors import RunStopped
from trainlab.engine.fit import train

from helpers import FAST as SHRUNK
from helpers import blown_checkpoint, compose

DEVICE = "cuda"
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
FAST = [*SHRUNK, f"device={DEVICE}", "optimizer.lr=0.05", "model.width=16", "dataset.val_size=100"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_train_resume_evaluate_on_the_gpu(tmp_path, precision):
    config, run = [*FAST, f"trainer.precision={precision}"], tmp_path / "run"
    train(compose([*config, "trainer.epochs=2"]), run)
    train_command(compose([*config, "trainer.epochs=3", f"resume={run}"]), tmp_path / "unused",
                  overrides=["trainer.epochs=3"])
    frame = pd.read_csv(run / "metrics.csv")
    assert list(frame["epoch"]) == [1, 2, 3] and frame.notna().all().all(), frame
    runtime = json.loads((run / "run.json").read_text())["runtime"]
    assert str(runtime["device"]).startswith(DEVICE) and runtime["precision"] == precision
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 3 and all(t.device.type == "cpu" for t in ckpt["model"].values())
    assert bool(ckpt["scaler"]) == (precision == "16-mixed")  # only fp16 needs loss scaling
    metrics = evaluate.run(OmegaConf.create({"ckpt": str(run / "checkpoints" / "last.ckpt"), "split": "val"}),
                       tmp_path / "eval", overrides=[])
    measured = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    # cuDNN may pick other kernels than during training: one image of 100 is the most it may change.
    assert measured["val/acc1"] == pytest.approx(frame["val/acc1"].iloc[-1], abs=0.011), metrics


def test_non_finite_loss_under_fp16_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = [*FAST, "trainer.precision=16-mixed"]
    train(compose([*config, "trainer.epochs=1"]), tmp_path)
    good, blown = blown_checkpoint(tmp_path)
    with pytest.raises(RunStopped, match="non-finite loss or gradient at epoch 2"):
        train(compose([*config, "trainer.epochs=3"]), tmp_path, resumed_from=str(blown))
    assert json.loads((tmp_path / "summary.json").read_text())["stopped"] == "nan"
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert after["epoch"] == 1 and all(torch.equal(after["model"][k], good["model"][k]) for k in good["model"])
