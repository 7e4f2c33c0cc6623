"""The data readers on generated trees in the exact Tiny-ImageNet layout, the cache, and the loaders."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from trainlab.core.config import component
from trainlab.core.errors import DataError
from trainlab.data import EpochBatches

from helpers import write_tiny_imagenet


def tiny(root, **kw):
    return component("dataset", "tiny_imagenet", root=str(root), **{"batch_size": 4, "cache": False, **kw})


def test_reader_labels_classes_and_names(tmp_path):
    root = write_tiny_imagenet(tmp_path / "t", modes={("n01", 0): "L", ("n03", 1): "CMYK"})
    data = tiny(root)
    data.setup(("train", "val", "test"))
    # Class index = position in the *sorted* wnids, although wnids.txt is unsorted.
    assert data.classes == ["n01", "n02", "n03"]
    assert data.class_names == ["name of n01, alias", "name of n02, alias", "name of n03, alias"]
    train, val, test = data.splits["train"], data.splits["val"], data.splits["test"]
    assert train.images.shape == (18, 3, 64, 64) and train.images.dtype == torch.uint8
    for path, label in zip(train.paths, train.labels.tolist()):
        assert f"/train/{data.classes[label]}/images/" in path
    # val is flat: labels come from val_annotations.txt, never from folders.
    annotations = dict(line.split("\t")[:2] for line in (root / "val" / "val_annotations.txt").read_text().splitlines())
    assert len(val) == 9 and len(set(val.labels.tolist())) == 3
    for path, label in zip(val.paths, val.labels.tolist()):
        assert data.classes[label] == annotations[os.path.basename(path)]
    assert test.labels is None and len(test) == 4


def test_grayscale_and_cmyk_become_rgb(tmp_path):
    root = write_tiny_imagenet(tmp_path / "t", modes={("n01", 0): "L", ("n03", 1): "CMYK"})
    data = tiny(root)
    data.setup(("train",))
    paths = data.splits["train"].paths
    gray = data.splits["train"].images[paths.index(str(root / "train/n01/images/n01_0.JPEG"))]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])  # a gray picture in 3 channels
    cmyk_index = paths.index(str(root / "train/n03/images/n03_1.JPEG"))
    reference = np.asarray(Image.open(paths[cmyk_index]).convert("RGB")).transpose(2, 0, 1).astype(int)
    decoded = data.splits["train"].images[cmyk_index].numpy().astype(int)
    assert np.abs(decoded - reference).mean() < 8  # same colours as PIL's CMYK->RGB, up to decoder rounding


@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "val" / "val_annotations.txt").unlink(), "val/images exists but .*val_annotations.txt does not"),
    (lambda r: (r / "wnids.txt").unlink(), "wnids.txt is missing"),
    (lambda r: shutil.rmtree(r / "train" / "n02"), r"train/n02/images is missing \(wnids.txt lists n02\)"),
    (lambda r: shutil.rmtree(r / "val" / "images"), "val/images is missing"),
    (lambda r: (r / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn77\t0\t0\t1\t1\n"), "line 1"),
    (lambda r: shutil.rmtree(r), "does not exist; get tiny-imagenet-200.zip"),
])
def test_malformed_layouts_name_the_problem(tiny_root, breakage, message):
    breakage(tiny_root)
    with pytest.raises(DataError, match=message):
        tiny(tiny_root).setup()


def test_corrupt_image_is_named(tiny_root):
    bad = tiny_root / "train" / "n01" / "images" / "n01_2.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="n01_2.JPEG"):
        tiny(tiny_root).setup()


def test_cached_and_uncached_pipelines_match(tiny_root, tmp_path):
    plain = tiny(tiny_root)
    plain.setup()
    cached = tiny(tiny_root, cache=True, cache_dir=str(tmp_path / "cache"))
    cached.setup()
    again = tiny(tiny_root, cache=True, cache_dir=str(tmp_path / "cache"))
    again.setup()  # second start reads the memory-mapped array
    for split in ("train", "val"):
        for other in (cached, again):
            assert torch.equal(plain.splits[split].images, other.splits[split].images)
            assert torch.equal(plain.splits[split].labels, other.splits[split].labels)
    assert plain.mean == again.mean and plain.std == again.std
    assert len(list((tmp_path / "cache").glob("*/*.npy"))) == 2  # in the data set's own folder of cache_dir


def test_cache_is_rebuilt_when_a_source_changes(tiny_root, tmp_path):
    data = tiny(tiny_root, cache=True, cache_dir=str(tmp_path / "cache"))
    data.setup(("train",))
    target = tiny_root / "train" / "n02" / "images" / "n02_0.JPEG"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))
    fresh = tiny(tiny_root, cache=True, cache_dir=str(tmp_path / "cache"))
    fresh.setup(("train",))
    index = fresh.splits["train"].paths.index(str(target))
    assert fresh.splits["train"].images[index, 0].float().mean() > 240  # the new red image, not the stale one
    assert len(list((tmp_path / "cache").glob("*/train-*.npy"))) == 1  # the stale array is gone


def test_mean_std_are_computed_from_train(tiny_root):
    data = tiny(tiny_root)
    data.setup(("train",))
    x = data.splits["train"].images.double() / 255
    assert np.allclose(data.mean, x.mean(dim=(0, 2, 3)).numpy(), atol=1e-5)
    assert np.allclose(data.std, x.std(dim=(0, 2, 3), unbiased=False).numpy(), atol=1e-5)


def test_image_folder_train_val_and_stratified_split(tmp_path):
    root = tmp_path / "pets"
    rng = np.random.default_rng(0)
    for cls, n in (("cat", 10), ("dog", 5)):
        (root / cls).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / cls / f"{k}.png")
    data = component("dataset", "image_folder", root=str(root), image_size=32, batch_size=4, cache=False, split_seed=1)
    data.setup()
    assert data.classes == ["cat", "dog"]
    assert data.splits["train"].images.shape[1:] == (3, 32, 32)  # resized and centre-cropped
    assert sorted(data.splits["val"].labels.tolist()) == [0, 0, 1]  # 20% of each class
    assert not set(data.splits["train"].paths) & set(data.splits["val"].paths)
    split_root = tmp_path / "split"
    for split in ("train", "val"):
        shutil.copytree(root, split_root / split)
    explicit = component("dataset", "image_folder", root=str(split_root), image_size=32, batch_size=4, cache=False)
    explicit.setup()
    assert len(explicit.splits["train"]) == 15 and len(explicit.splits["val"]) == 15


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        component("dataset", "image_folder", root=str(tmp_path / "empty"), image_size=32, batch_size=4,
                  cache=False).setup()


def test_digits_are_real_images_in_the_tiny_layout(tmp_path):
    root = tmp_path / "digits"
    data = component("dataset", "digits", root=str(root), image_size=64, batch_size=32, cache=False)
    data.setup(("train", "val", "test"))
    assert (root / "wnids.txt").is_file() and (root / "val" / "val_annotations.txt").is_file()
    assert data.num_classes == 10 and data.class_names[3] == "three"
    sizes = {n: len(s) for n, s in data.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["train"] > 1200
    assert torch.bincount(data.splits["val"].labels).min() >= 25  # stratified


def test_loaders_shuffle_train_by_epoch_and_keep_val_order():
    data = component("dataset", "fake", num_classes=4, train_size=50, val_size=10, image_size=8, batch_size=8)
    data.setup()
    train = data.loader("train", seed=3)
    first = torch.cat([labels for _, labels in train])
    assert len(first) == 48  # the incomplete last batch is dropped for training
    train.sampler.set_epoch(1)
    one = [b[1] for b in train]
    train.sampler.set_epoch(2)
    two = [b[1] for b in train]
    train.sampler.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(one, [b[1] for b in train]))  # same epoch, same order
    assert not all(torch.equal(a, b) for a, b in zip(one, two))
    val = torch.cat([labels for _, labels in data.loader("val")])
    assert torch.equal(val, data.splits["val"].labels)


def test_epoch_batches_never_drop_the_only_batch():
    assert len(EpochBatches(5, 8, shuffle=True, seed=0, drop_last=True)) == 1
    assert [len(b) for b in EpochBatches(10, 4, shuffle=False, seed=0, drop_last=False)] == [4, 4, 2]
