"""Data sets read straight from an archive (`dataset.root=tiny-imagenet-200.zip`): the same images, labels and
classes as the unpacked folder, nothing unpacked, the cache in trainlab's cache folder, one line for a bad
archive."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainlab.core.config import component
from trainlab.core.errors import DataError
from trainlab.data import archive
from trainlab.data.decode import decode_file

from helpers import assert_one_line, hashes, run, shell, write_tiny_imagenet


def zip_tree(folder: Path, target: Path, top: bool = True) -> Path:
    """`folder` zipped as the official file is (its top folder inside), or with its contents at the top."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, str(path.relative_to(folder.parent if top else folder)))
    return target


def tar_tree(folder: Path, target: Path) -> Path:
    with tarfile.open(target, "w:gz") as t:
        t.add(folder, arcname=folder.name)
    return target


def files_under(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")}


@pytest.fixture
def tiny_zip(tmp_path) -> tuple[Path, Path]:
    """(the unpacked tree, its zip in the official layout) in a folder of their own."""
    data = tmp_path / "data"
    tree = write_tiny_imagenet(data / "tiny-imagenet-200", modes={("n01", 1): "L"})
    return tree, zip_tree(tree, data / "tiny-imagenet-200.zip")


@pytest.mark.parametrize("top", [True, False])
def test_a_zip_reads_as_its_unpacked_folder(tmp_path, tiny_zip, top):
    tree, official = tiny_zip
    source = official if top else zip_tree(tree, tmp_path / "flat.zip", top=False)
    before = files_under(source.parent)
    folder = component("dataset", "tiny_imagenet", root=str(tree), batch_size=4, cache=False)
    packed = component("dataset", "tiny_imagenet", root=str(source), batch_size=4, cache=True)
    folder.setup(("train", "val", "test"))
    packed.setup(("train", "val", "test"))
    assert packed.classes == folder.classes and packed.class_names == folder.class_names
    for split in ("train", "val", "test"):
        a, b = folder.splits[split], packed.splits[split]
        assert torch.equal(a.images, b.images), split
        assert (a.labels is None and b.labels is None) or torch.equal(a.labels, b.labels)
        # A member's path is <archive>/<member>: what predictions.csv shows, and what reads it back.
        assert [Path(p).name for p in a.paths] == [Path(p).name for p in b.paths]
        assert all(p.startswith(f"{source}/") for p in b.paths)
    assert torch.equal(decode_file(packed.splits["val"].paths[2], 64), folder.splits["val"].images[2])
    # The cache is in trainlab's cache folder; nothing is unpacked or written beside the archive.
    assert Path(packed.cache_info["dir"]).is_relative_to(Path(os.environ["TRAINLAB_CACHE_DIR"]))
    assert files_under(source.parent) == before


def test_a_tar_of_class_folders_and_a_zip_of_train_and_val(tmp_path):
    tree = write_tiny_imagenet(tmp_path / "tiny", wnids=("cat", "dog"), train_per_class=5, val_per_class=2)
    flowers = tmp_path / "flowers"
    for wnid in ("cat", "dog"):
        shutil.copytree(tree / "train" / wnid / "images", flowers / wnid)
    folder = component("dataset", "image_folder", root=str(flowers), batch_size=2, cache=False, image_size=32)
    packed = component("dataset", "image_folder", root=str(tar_tree(flowers, tmp_path / "flowers.tar.gz")),
                       batch_size=2, cache=False, image_size=32)
    folder.setup()
    packed.setup()
    assert packed.classes == ["cat", "dog"]
    for split in ("train", "val"):
        assert torch.equal(folder.splits[split].images, packed.splits[split].images)
        assert torch.equal(folder.splits[split].labels, packed.splits[split].labels)
    split_tree = tmp_path / "split"
    shutil.copytree(flowers, split_tree / "train")
    shutil.copytree(flowers, split_tree / "val")
    both = component("dataset", "image_folder", root=str(zip_tree(split_tree, tmp_path / "split.zip", top=False)),
                     batch_size=2, cache=False, image_size=32)
    both.setup()
    assert len(both.splits["train"]) == len(both.splits["val"]) == 10


def test_compares_grid_reads_the_images_back_from_the_archive(tmp_path, tiny_zip, monkeypatch):
    import trainlab.data.decode as decode
    from trainlab.commands.compare import disagreement_grid

    _, official = tiny_zip
    data = component("dataset", "tiny_imagenet", root=str(official), batch_size=4, cache=False)
    data.setup(("val",))
    read = []
    monkeypatch.setattr(decode, "decode_file", lambda path, size: (decode_file(path, size), read.append(path))[0])
    rows = pd.DataFrame({"path": data.splits["val"].paths[:4], "target": 0, "target_name": "a", "a_pred": 0,
                         "a_pred_name": "a", "a_confidence": 0.9, "b_pred": 1, "b_pred_name": "b",
                         "b_confidence": 0.8})
    disagreement_grid(rows, "A", "B", tmp_path / "grid.png")
    assert read == data.splits["val"].paths[:4] and (tmp_path / "grid.png").stat().st_size > 1000


def test_the_cache_is_rebuilt_when_the_archive_changes(tmp_path, tiny_zip, caplog):
    tree, official = tiny_zip

    def load():
        data = component("dataset", "tiny_imagenet", root=str(official), batch_size=4, cache=True)
        data.setup(("val",))
        return data.splits["val"].images.clone()

    with caplog.at_level(logging.INFO):
        first = load()
        assert "decoding" in caplog.text
        caplog.clear()
        assert torch.equal(load(), first) and "using the decoded cache" in caplog.text
        caplog.clear()
        shutil.copy(next((tree / "train" / "n03" / "images").iterdir()), tree / "val" / "images" / "val_0.JPEG")
        official.unlink()
        zip_tree(tree, official)
        changed = load()
    assert "decoding" in caplog.text and not torch.equal(changed, first)


def test_the_log_says_whether_it_is_the_official_archive(tiny_zip, monkeypatch, caplog):
    _, official = tiny_zip
    data = component("dataset", "tiny_imagenet", root=str(official), batch_size=4, cache=False)
    with caplog.at_level(logging.INFO):
        data.setup(("val",))
    assert "is not the official archive" in caplog.text and archive.TINY_MD5 in caplog.text
    monkeypatch.setattr(archive, "TINY_MD5", hashlib.md5(official.read_bytes()).hexdigest())
    caplog.clear()
    with caplog.at_level(logging.INFO):
        component("dataset", "tiny_imagenet", root=str(official), batch_size=4, cache=False).setup(("val",))
    assert "the official tiny-imagenet-200.zip" in caplog.text and "not the official" not in caplog.text


def test_a_broken_archive_is_named_before_anything_is_read(tmp_path, tiny_zip):
    _, official = tiny_zip
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(official.read_bytes()[: official.stat().st_size // 2])
    with pytest.raises(DataError, match=r"truncated.zip is not a readable zip archive .*download or pack it again"):
        component("dataset", "tiny_imagenet", root=str(truncated)).check_root()
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip" * 20)
    with pytest.raises(DataError, match="garbage.tar.gz is not a readable tar archive"):
        component("dataset", "image_folder", root=str(garbage)).check_root()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated", "not_an_image", "no_layout", "not_an_archive"])
def test_bad_archives_are_one_line_and_leave_nothing_behind(tmp_path, tiny_zip, capsys, monkeypatch, case):
    tree, official = tiny_zip
    bad = tmp_path / "bad"
    bad.mkdir()
    if case == "truncated":
        source = bad / "tiny-imagenet-200.zip"
        source.write_bytes(official.read_bytes()[:3000])
        expected = ["is not a readable zip archive", "download or pack it again"]
    elif case == "not_an_image":
        (tree / "train" / "n02" / "images" / "n02_1.JPEG").write_bytes(b"not a jpeg")
        source = zip_tree(tree, bad / "tiny-imagenet-200.zip")
        expected = ["cannot decode image", "tiny-imagenet-200.zip/tiny-imagenet-200/train/n02/images/n02_1.JPEG",
                    "pack the archive again without it", "dataset.skip_bad_images=true"]
    elif case == "no_layout":
        (tree / "wnids.txt").unlink()
        source = zip_tree(tree, bad / "tiny-imagenet-200.zip")
        expected = ["not in the tiny-imagenet-200 layout: wnids.txt is missing", "no need to unzip"]
    else:
        source = bad / "tiny-imagenet-200.rar"
        source.write_bytes(b"Rar!")
        expected = ["is a file but not an archive trainlab reads (.zip, .tar, .tar.gz, .tgz)"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path / "cache"))
    before = hashes(bad)
    run_dir = tmp_path / "run"
    code, out, err = shell("train", "+experiment=resnet18_tiny", f"dataset.root={source}", "model=small_cnn",
                         "trainer.epochs=1", "lr_schedule.warmup_epochs=0", "trainer.autotune=false",
                         f"hydra.run.dir={run_dir}")
    assert_one_line(code, out, err, *expected)
    assert hashes(bad) == before  # the archive's folder: nothing changed, nothing added
    # No decoded array was kept for it; a bad member is found while decoding, after the run folder was made:
    # that folder then holds the failed run's log and config, no record of a run.
    assert not list((tmp_path / "cache").rglob("*.npy"))
    assert not run_dir.exists() or {p.name for p in run_dir.iterdir()} <= {".hydra", ".trainlab.lock", "train.log"}
    assert case == "not_an_image" or not run_dir.exists()


@pytest.mark.slow
def test_train_evaluate_compare_and_predict_from_the_official_zip(tmp_path, capsys, monkeypatch):
    """The whole exercise from the zip on a clean folder: no file appears outside trainlab's cache and the
    run folders, and compare's grid and predict read the images back from the archive. (In this process: the
    console script's code path, without another interpreter's imports.)"""
    data = tmp_path / "data"
    tree = write_tiny_imagenet(data / "tiny-imagenet-200", wnids=("n03", "n01", "n02", "n04"), train_per_class=6,
                               val_per_class=3)
    official = zip_tree(tree, data / "tiny-imagenet-200.zip")
    unlabelled = tar_tree(tree / "val" / "images", tmp_path / "unlabelled.tgz")
    shutil.rmtree(tree)  # only the archive is there
    work, cache = tmp_path / "work", Path(os.environ["TRAINLAB_CACHE_DIR"])
    work.mkdir()
    monkeypatch.chdir(work)
    before = hashes(tmp_path)
    run_dir = work / "run"
    code, out, err = run(capsys, "train", "+experiment=resnet18_tiny", f"dataset.root={official}", "trainer.epochs=2",
                         "dataset.batch_size=8", "lr_schedule.warmup_epochs=0", "trainer.histogram_every_n_epochs=0",
                         "trainer.autotune=false", "checkpoint.every_n_epochs=1", f"hydra.run.dir={run_dir}")
    assert code == 0, err[-3000:]
    assert "is not the official archive" in out + err
    code, _, err = run(capsys, "evaluate", f"ckpt={run_dir}")
    assert code == 0, err[-2000:]
    predictions = pd.read_csv(next((run_dir / "eval").glob("*/predictions.csv")))
    assert len(predictions) == 12 and predictions["path"].str.startswith(f"{official}/tiny-imagenet-200/val/").all()
    checkpoints = run_dir / "checkpoints"
    code, _, err = run(capsys, "compare", str(checkpoints / "epoch_001.ckpt"), str(checkpoints / "epoch_002.ckpt"),
                       f"out={work / 'compare'}")
    assert code == 0, err[-2000:]
    disagreements = pd.read_csv(work / "compare" / "disagreements.csv")
    assert (work / "compare" / "compare.json").is_file() and set(disagreements.columns) >= {"path"}
    code, _, err = run(capsys, "predict", f"ckpt={run_dir}", f"input={unlabelled}", f"out={work / 'predict'}")
    assert code == 0, err[-2000:]
    rows = pd.read_csv(work / "predict" / "predictions.csv")
    assert len(rows) == 12 and rows["path"].str.startswith(f"{unlabelled}/").all()
    new = [p for p in hashes(tmp_path) if p not in before]
    assert new and all(Path(p).is_relative_to(work) or Path(p).is_relative_to(cache) for p in new), new[:5]
    assert all(before[p] == h for p, h in hashes(tmp_path).items() if p in before)
    # The archive moved: the stored run says so in one line, as for a moved folder.
    official.rename(tmp_path / "elsewhere.zip")
    code, out, err = shell("evaluate", f"ckpt={run_dir}")
    assert_one_line(code, out, err, "no longer at")
