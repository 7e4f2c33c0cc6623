"""torchvision's built-in data sets: files written in each set's own on-disk format, read by torchvision itself,
and a grayscale set feeding both an MLP (one channel) and a ResNet (repeated into three)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from trainlab.core.config import component
from trainlab.core.errors import DataError
from trainlab.data.builtin import _stratified
from trainlab.data.testing import write_cifar10, write_mnist

from helpers import assert_one_line, run, shell


def test_mnist_idx_files_become_one_channel_tensors_with_a_stratified_val_split(tmp_path):
    images, labels = write_mnist(tmp_path, train=200, test=50)
    data = component("dataset", "mnist", root=str(tmp_path), image_size=28, batch_size=16, val_fraction=0.1)
    data.setup(("train", "val", "test"))
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    assert data.channels == 1 and train.images.shape[1:] == (1, 28, 28) and train.images.dtype == torch.uint8
    assert (len(train), len(val), len(test)) == (180, 20, 50)
    assert data.classes[:2] == ["0 - zero", "1 - one"]  # torchvision's own class names
    # Every image is the one written at its index (paths say which), with its label; val holds 2 of each class.
    for split in (train, val):
        idx = [int(p.rsplit("/", 1)[1]) for p in split.paths]
        assert np.array_equal(split.images[:, 0].numpy(), images[:200][idx])
        assert split.labels.tolist() == labels[:200][idx].tolist()
    assert np.bincount(val.labels.numpy(), minlength=10).tolist() == [2] * 10
    assert np.array_equal(test.images[:, 0].numpy(), images[200:])
    # The training mean/std are of the training images only.
    assert data.mean[0] == pytest.approx(images[:200][[int(p.rsplit("/", 1)[1]) for p in train.paths]].mean() / 255,
                                         abs=1e-5)


def test_cifar10_pickled_batches_and_resizing(tmp_path):
    images, labels = write_cifar10(tmp_path, per_batch=20, test=30)
    data = component("dataset", "cifar10", root=str(tmp_path), image_size=32, batch_size=8, val_fraction=0.0)
    data.setup(("train", "val", "test"))
    assert data.channels == 3 and data.classes[0] == "airplane"
    assert torch.equal(data.splits["train"].images, torch.from_numpy(images[:100]))
    assert data.splits["val"] is data.splits["test"]  # val_fraction=0: val is the test part
    assert data.splits["test"].labels.tolist() == labels[100:]
    bigger = component("dataset", "cifar10", root=str(tmp_path), image_size=48, batch_size=8)
    bigger.setup(("train",))
    assert bigger.splits["train"].images.shape[1:] == (3, 48, 48)


def test_a_set_without_plain_arrays_is_read_image_by_image(tmp_path):
    class Pictures(torch.utils.data.Dataset):  # what a torchvision set looks like when it keeps file paths
        classes = ["a", "b"]

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return Image.fromarray(np.full((10, 10), 60 * i, dtype=np.uint8), mode="L"), i % 2

    data = component("dataset", "mnist", root=str(tmp_path), image_size=10, batch_size=2)
    images, labels = data._tensors(Pictures())
    assert images.shape == (4, 1, 10, 10) and images[3].unique().tolist() == [180] and labels.tolist() == [0, 1, 0, 1]


def test_stratified_split_is_seeded_and_per_class():
    labels = torch.arange(100) % 4
    a, b, c = _stratified(labels, 0.2, 0), _stratified(labels, 0.2, 0), _stratified(labels, 0.2, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.bincount(labels[a]).tolist() == [5, 5, 5, 5]


@pytest.mark.slow
def test_missing_files_name_what_to_put_where(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"put data_batch_1, .* into .*cifar-10-batches-py") as error:
        component("dataset", "cifar10", root=str(tmp_path / "empty"), image_size=32, batch_size=8).setup()
    assert "download=True" not in str(error.value)  # torchvision's argument, not a trainlab key
    line = assert_one_line(*shell("train", "+experiment=mnist_mlp", f"dataset.root={tmp_path / 'none'}"),
                           "train-images-idx3-ubyte", "MNIST/raw", "dataset.download=true")
    assert not (tmp_path / "none").exists(), line  # nothing was created in its place
    assert_one_line(*shell("train", "dataset=torchvision", "dataset.name=MNSIT", f"dataset.root={tmp_path}"),
                    "did you mean MNIST")


def test_grayscale_batches_are_repeated_for_an_rgb_model_only():
    gray = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    one = component("augment", "none", mean=[0.5], std=[0.25], channels=None, color_jitter=0.2)
    three = component("augment", "none", mean=[0.5], std=[0.25], channels=3)
    assert one.train(gray, torch.Generator().manual_seed(0)).shape == (4, 1, 8, 8)
    x = three.normalize(gray)
    assert x.shape == (4, 3, 8, 8) and torch.equal(x[:, 0], x[:, 2])
    assert torch.allclose(x[:, 0], (gray[:, 0].float() / 255 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(Exception, match="model.in_channels=null"):
        component("augment", "none", mean=[0.5, 0.5, 0.5], std=[0.2] * 3, channels=1)


@pytest.mark.slow
def test_mnist_mlp_experiment_trains_evaluates_and_predicts_from_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_mnist(tmp_path / "data", train=300, test=60)
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "+experiment=mnist_mlp", f"dataset.root={tmp_path / 'data'}",
                         "trainer.epochs=2", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    history = pd.read_csv(run_dir / "metrics.csv")
    assert len(history) == 2 and history["val/acc1"].iloc[-1] > 0.5  # bars in fixed places: easy to learn
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["model"]["1.weight"].shape == (512, 28 * 28)  # one channel, flattened
    assert len(ckpt["normalization"]["mean"]) == 1
    info = json.loads((run_dir / "run.json").read_text())
    assert info["data"]["channels"] == 1 and info["augment"]["channels"] == 1
    code, out, err = run(capsys, "evaluate", f"ckpt={run_dir}", "split=test")
    assert code == 0, err
    metrics = json.loads(next((run_dir / "eval").glob("*/metrics.json")).read_text())
    assert metrics["metrics"]["test/acc1"] > 0.5
    # predict reads RGB files; a grayscale model sees them as PIL's "L" conversion would.
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(pictures / "x.png")
    from trainlab.engine.ready import to_gray

    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    assert np.array_equal(to_gray(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0, 0].numpy(), expected)
    code, out, err = run(capsys, "predict", f"ckpt={run_dir}", f"input={pictures}", f"out={tmp_path / 'pred'}")
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "pred" / "predictions.csv")) == 1


@pytest.mark.slow
def test_a_resnet_trains_on_grayscale_through_three_repeated_channels(tmp_path, capsys):
    write_mnist(tmp_path / "data", train=120, test=20, size=32)
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "dataset=mnist", f"dataset.root={tmp_path / 'data'}", "dataset.image_size=32",
                         "dataset.batch_size=40", "model=resnet18", "trainer.epochs=1", "trainer.autotune=false",
                         "trainer.precision=32", "trainer.channels_last=false", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["model"]["conv1.weight"].shape[1] == 3 and len(ckpt["normalization"]["mean"]) == 1
