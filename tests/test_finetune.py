"""Starting from any weights (trainlab checkpoint, plain state dict, safetensors) and freezing layers."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from trainlab.core.errors import CheckpointError, ConfigError
from trainlab.core.runtime import resolve_runtime
from trainlab.engine.build import build_model
from trainlab.engine.fit import train
from trainlab.models import frozen, small_cnn

from helpers import FAST, assert_one_line, compose, run, shell

SMALL = FAST + ["dataset.train_size=48", "dataset.val_size=16", "trainer.epochs=1"]
CPU = resolve_runtime("cpu", "32", "false", "auto", False)


def classes(n: int) -> list[str]:
    return [f"class{k:03d}" for k in range(n)]


def test_a_plain_state_dict_of_another_class_count_starts_a_resnet(tmp_path, caplog):
    source = torchvision.models.resnet18(num_classes=7)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    cfg = compose(SMALL + ["model=resnet18", "dataset.num_classes=5", f"model.weights={tmp_path / 'resnet18.pth'}"])
    with caplog.at_level("INFO", logger="trainlab.engine.build"):
        model = build_model(cfg, 5, classes(5), CPU)
    assert torch.equal(model.conv1.weight, source.conv1.weight) and torch.equal(model.layer4[1].bn2.bias,
                                                                                 source.layer4[1].bn2.bias)
    assert model.fc.out_features == 5
    assert "the classifier (fc.bias, fc.weight) is re-initialised for this data's 5 classes" in caplog.text


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_the_same_class_count_keeps_the_head_and_other_layers_must_fit(tmp_path, suffix):
    net = small_cnn(num_classes=10, width=8, dropout=0.0, weights=None, in_channels=3)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    cfg = compose(SMALL + ["model.width=8", f"model.weights={path}"])
    model = build_model(cfg, 10, classes(10), CPU)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())  # head kept: same count
    wider = compose(SMALL + ["model.width=16", f"model.weights={path}"])
    with pytest.raises(CheckpointError, match=r"does not fit this model: \d+ of its \d+ tensors .* \(0\.0\.weight"):
        build_model(wider, 10, classes(10), CPU)


def test_files_that_are_not_weights_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"w": Evil()}, tmp_path / "evil.pth")
    (tmp_path / "notes.pt").write_text("not torch")
    for name, message in (("evil.pth", "pickled objects other than tensors"),
                          ("notes.pt", "it is not a file torch.save wrote")):
        assert_one_line(*shell("train", *SMALL, f"model.weights={tmp_path / name}",
                             f"hydra.run.dir={tmp_path / name}-run"), "cannot be loaded as a plain state dict", message)
        assert not (tmp_path / f"{name}-run").exists()  # refused before the run directory is made
    assert not (tmp_path / "pwned").exists()


def test_a_frozen_backbone_stays_bit_identical(tmp_path):
    start = small_cnn(num_classes=10, width=8, dropout=0.0, weights=None, in_channels=3)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    train(compose(SMALL + ["model.width=8", f"model.weights={tmp_path / 'start.pt'}", "model.freeze=backbone",
                           "optimizer.lr=0.1"]), tmp_path / "run")
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["model"]
    weights = [n for n, _ in start.named_parameters()]
    head = [n for n in weights if n.startswith("10.")]  # the Linear after flatten/dropout
    assert head and all(torch.equal(trained[n], start.state_dict()[n]) for n in weights if n not in head)
    assert not any(torch.equal(trained[n], start.state_dict()[n]) for n in head)  # the classifier learned


def test_freezing_by_prefix_and_a_wrong_prefix(tmp_path):
    model = frozen(small_cnn(num_classes=4, width=8, dropout=0.0, weights=None, in_channels=3), ["0", "2"])
    still = sorted({n.split(".")[0] for n, p in model.named_parameters() if not p.requires_grad})
    assert still == ["0", "2"]
    with pytest.raises(ConfigError, match=r"model.freeze: no parameters under layer9; .* \(0, 2, 4, 6, 10\)"):
        frozen(small_cnn(num_classes=4, width=8, dropout=0.0, weights=None, in_channels=3), ["layer9"])


@pytest.mark.slow
def test_normalize_weights_uses_what_the_starting_weights_expect(tmp_path, capsys, monkeypatch):
    import json

    from trainlab.engine.build import IMAGENET_NORMALIZATION

    monkeypatch.chdir(tmp_path)
    start = small_cnn(num_classes=10, width=8, dropout=0.0, weights=None, in_channels=3)
    torch.save(start.state_dict(), tmp_path / "start.pt")
    args = [*SMALL, "model.width=8", "dataset.normalize=weights"]
    code, _, err = run(capsys, "train", *args, f"model.weights={tmp_path / 'start.pt'}", "hydra.run.dir=plain")
    assert code == 0, err
    data = json.loads((tmp_path / "plain" / "run.json").read_text())["data"]
    assert (tuple(data["mean"]), tuple(data["std"])) == IMAGENET_NORMALIZATION  # a plain state dict: ImageNet's
    ckpt = tmp_path / "plain" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["normalization"]["mean"] == list(IMAGENET_NORMALIZATION[0])
    own = tmp_path / "own"
    train(compose(SMALL + ["model.width=8", "dataset.seed=5"]), own)
    code, _, err = run(capsys, "train", *args, f"model.weights={own / 'checkpoints' / 'last.ckpt'}",
                       "hydra.run.dir=from_ckpt")
    assert code == 0, err
    stored = torch.load(own / "checkpoints" / "last.ckpt", weights_only=True)["normalization"]
    assert json.loads((tmp_path / "from_ckpt" / "run.json").read_text())["data"]["mean"] == stored["mean"]
    assert_one_line(*shell("train", *args, "hydra.run.dir=none"), "dataset.normalize=weights needs model.weights")
    assert not (tmp_path / "none").exists()
