"""`trainlab export`: every format reloads outside trainlab and gives the checkpoint's logits."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from trainlab.core.runtime import resolve_runtime
from trainlab.engine.build import build_model
from trainlab.record.checkpoint import load_checkpoint
from trainlab.record.stored_run import config_from_checkpoint

from helpers import FAST, assert_one_line, compose, run, shell


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory):
    """ResNet-18 trained for one epoch on small fake images (its weights stored channels-last)."""
    from trainlab.engine.fit import train

    run_dir = tmp_path_factory.mktemp("export") / "run"
    train(compose(FAST + ["model=resnet18", "dataset.image_size=16", "dataset.train_size=32", "dataset.val_size=8",
                          "dataset.num_classes=5", "trainer.epochs=1", "trainer.channels_last=true"]), run_dir)
    return run_dir


def reference_logits(run_dir, images):
    """The checkpoint's own model, built by trainlab, on `images`."""
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    cfg, _ = config_from_checkpoint(ckpt["config"], [], {})
    model = build_model(cfg, 5, ckpt["classes"], resolve_runtime("cpu", "32", "false", "auto", False))
    model.load_state_dict(ckpt["model"])
    with torch.inference_mode():
        return model.eval()(images)


def export(capsys, run_dir, fmt, out):
    code, text, err = run(capsys, "export", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"format={fmt}",
                          f"out={out}")
    assert code == 0, err
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["check"]["max_abs_diff"] < 1e-4 and "largest logit difference" in text
    return sidecar


def test_safetensors_load_into_plain_torchvision(resnet_run, tmp_path, capsys, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)
    sidecar = export(capsys, resnet_run, "safetensors", tmp_path / "st")
    assert sidecar["torchvision"] == {"builder": "torchvision.models.resnet18", "num_classes": 5,
                                      "small_stem": False, "dropout_head": False}
    assert sidecar["input_size"] == [3, 16, 16] and len(sidecar["normalization"]["mean"]) == 3
    plain = torchvision.models.resnet18(num_classes=sidecar["num_classes"])  # no trainlab involved
    plain.load_state_dict(load_file(str(tmp_path / "st" / "model.safetensors")))
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = plain.eval()(images)
    assert torch.allclose(got, reference_logits(resnet_run, images), atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # the format users asked for
@pytest.mark.parametrize("fmt", ["state_dict", "torchscript", pytest.param("onnx", marks=pytest.mark.slow)])
def test_other_formats_reload_with_the_same_logits(resnet_run, tmp_path, capsys, monkeypatch, fmt):
    monkeypatch.chdir(tmp_path)
    export(capsys, resnet_run, fmt, tmp_path / fmt)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    if fmt == "state_dict":
        plain = torchvision.models.resnet18(num_classes=5)
        plain.load_state_dict(torch.load(tmp_path / fmt / "model.pt", weights_only=True))
        with torch.inference_mode():
            got = plain.eval()(images)
    elif fmt == "torchscript":
        got = torch.jit.load(str(tmp_path / fmt / "model.torchscript.pt"))(images)
    else:
        onnxruntime = pytest.importorskip("onnxruntime")
        session = onnxruntime.InferenceSession(str(tmp_path / fmt / "model.onnx"), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])  # another batch size than exported
    assert torch.allclose(got, reference_logits(resnet_run, images), atol=1e-4)


@pytest.mark.slow
def test_bad_export_arguments_are_one_line(resnet_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line(*shell("export", f"ckpt={resnet_run}", "format=tflite"), "format must be one of")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep")
    assert_one_line(*shell("export", f"ckpt={resnet_run}", "format=safetensors", f"out={tmp_path / 'busy'}"),
                    "is not empty and holds no earlier export")
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["mine.txt"]
