"""What the layers see: feature maps and activation statistics, in training (TensorBoard, activations.csv,
the diagnostics) and from `trainlab visualize`."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trainlab.analysis.activations import capture, channel_grid, statistics, watched_layers
from trainlab.analysis.diagnostics import diagnose
from trainlab.models import mlp, resnet, small_cnn

from helpers import FAST, assert_one_line, run, shell


def test_watched_layers_are_a_resnets_stages_and_other_models_relus():
    assert watched_layers(resnet(10, "resnet18", False, 0.0, None, 3)) == [
        "relu", "layer1", "layer2", "layer3", "layer4"]
    assert watched_layers(small_cnn(10, 8, 0.0, None, 3)) == ["0.2", "2.2", "4.2", "6.2"]
    assert watched_layers(mlp(10, 8, [16, 8], 0.0, None, 3)) == ["2", "5"]


def test_captured_outputs_and_their_statistics():
    torch.manual_seed(0)
    model = small_cnn(4, 8, 0.0, None, 3).train()
    x = torch.randn(3, 3, 16, 16)
    outputs = capture(model, x, ["0.2", "2.2"])
    assert model.training  # put back as it was
    model.eval()
    with torch.no_grad():
        first = model[0](x)
        second = model[2](model[1](first))
    assert torch.equal(outputs["0.2"], first) and torch.equal(outputs["2.2"], second)
    stats = statistics(outputs)
    values = first.numpy()
    assert stats["0.2"]["zero_fraction"] == pytest.approx(float((values == 0).mean()))
    assert stats["0.2"]["mean"] == pytest.approx(float(values.mean()), rel=1e-5)
    assert stats["0.2"]["std"] == pytest.approx(float(values.std(ddof=1)), rel=1e-4)
    grid = channel_grid(first[0], 4)
    assert grid.shape[0] == 1 and float(grid.min()) == 0.0 and float(grid.max()) == 1.0


def test_dead_and_collapsed_layers_are_diagnosed():
    history = pd.DataFrame({"epoch": [1, 2], "train/loss": [1.0, 0.9], "val/loss": [1.0, 0.95]})
    acts = pd.DataFrame({"epoch": [1, 2, 2, 2], "step": [5, 10, 10, 10], "layer": ["conv_a", "conv_a", "conv_b", "fc"],
                         "mean": [0.3, 0.0, 0.2, 0.5], "std": [0.4, 0.01, 0.3, 1e-5],
                         "zero_fraction": [0.5, 0.98, 0.5, 0.0]})
    kinds = {f.kind: f for f in diagnose(history, None, 10, acts)}
    assert "conv_a 98.0%" in kinds["dead layers"].evidence and "conv_b" not in kinds["dead layers"].evidence
    assert "fc" in kinds["collapsed layers"].evidence
    assert not [f for f in diagnose(history, None, 10, acts[acts["epoch"] == 1]) if "layers" in f.kind]


@pytest.mark.slow
def test_training_records_activations_and_visualize_draws_feature_maps(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *FAST, "trainer.activations_every_n_epochs=1", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    acts = pd.read_csv(run_dir / "activations.csv", dtype={"layer": str})
    assert acts.groupby("epoch")["layer"].apply(list).tolist() == [["0.2", "2.2", "4.2", "6.2"]] * 2
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    steps = pd.read_csv(run_dir / "metrics.csv")["step"].tolist()
    zeros = events.Scalars("activations/4.2/zero_fraction")
    assert [e.step for e in zeros] == steps
    assert [e.value for e in zeros] == pytest.approx(acts[acts["layer"] == "4.2"]["zero_fraction"].tolist())
    assert len(events.Images("feature_maps/0.2")) == 2 and len(events.Images("feature_maps/input")) == 2

    # visualize: one PNG per stage, its prediction is evaluate's for the same image.
    out = tmp_path / "vis"
    code, stdout, err = run(capsys, "visualize", f"ckpt={run_dir}", "image=0", f"out={out}", "channels=8")
    assert code == 0, err
    assert "visualize: precision=" in err and "predict:" not in err  # its own name in its log lines
    record = json.loads((out / "visualize.json").read_text())
    assert sorted(p.name for p in out.glob("*.png")) == ["0_2.png", "2_2.png", "4_2.png", "6_2.png", "input.png"]
    # +debug=fast: 16-pixel images, halved by each of the small CNN's poolings
    assert record["shapes"] == {"0.2": [32, 16, 16], "2.2": [64, 8, 8], "4.2": [128, 4, 4], "6.2": [128, 2, 2]}
    code, _, err = run(capsys, "evaluate", f"ckpt={run_dir}")
    assert code == 0, err
    predictions = pd.read_csv(next((run_dir / "eval").glob("*/predictions.csv")))
    assert record["predicted"] == predictions["pred_name"].iloc[0]
    board = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    assert set(board.Tags()["images"]) == {"feature_maps/input", "feature_maps/0.2", "feature_maps/2.2",
                                           "feature_maps/4.2", "feature_maps/6.2"}
    # A file as the image, and the errors.
    picture = tmp_path / "pic.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(picture)
    code, stdout, err = run(capsys, "visualize", f"ckpt={run_dir}", f"image={picture}", "layers=2.2",
                            f"out={tmp_path / 'vis2'}")
    assert code == 0, err
    assert json.loads((tmp_path / "vis2" / "visualize.json").read_text())["layers"] == ["2.2"]
    assert_one_line(*shell("visualize", f"ckpt={run_dir}", "layers=layer9"), "no module 'layer9'")
    assert_one_line(*shell("visualize", f"ckpt={run_dir}", "image=100000"), "image=100000")
