"""trainlab never touches what it did not create, and meets every bad input with one line on stderr, a non-zero
exit, no traceback, and every file that existed before byte-identical afterwards.

What a user sees (the exit status, the one line) comes from the CLI run in a fresh interpreter, as a shell runs it;
runs whose files a test then inspects may be called in this process (`trainlab.cli.main`)."""

from __future__ import annotations

import errno
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainlab import cli
from trainlab.core.config import component
from trainlab.core.errors import DataError
from trainlab.core.fs import FolderLock, free_run_dir
from trainlab.data import decode
from trainlab.data.digits import MARKER, ensure_digits_tree
from trainlab.data.testing import write_tiny_imagenet

from helpers import FAST as SHRUNK
from helpers import assert_one_line, assert_untouched, hashes, run, run_limited, shell

FAST = [*SHRUNK, "trainer.threads=1", "trainer.epochs=1"]  # the tests name their dataset


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Runs go under tmp_path/outputs; the demo data and caches go into a cache folder of the test's own."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TRAINLAB_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


def _photos(root: Path, classes=("cats", "dogs"), per_class=3, size=(40, 52)) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / c / f"{k}.jpg")
    return root


# --- the demo data set never writes into a user's folder ------------------------------------------------------

def test_pets_story_leaves_the_photos_intact(tmp_path, capsys):
    pets = _photos(tmp_path / "pets")
    before = hashes(pets)
    line = assert_one_line(*shell("train", f"dataset.root={pets}", "trainer.epochs=1"),
                           f"{pets} is not a digits folder made by trainlab", "dataset=image_folder")
    assert "empty folder" in line
    assert_untouched(before, pets, new_allowed="-none-")
    assert not (tmp_path / "outputs").exists()  # refused before a run directory was made


def test_digits_write_only_into_missing_empty_or_marked_folders(tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("do not delete")
    with pytest.raises(DataError, match="is not a digits folder made by trainlab"):
        ensure_digits_tree(mine)
    assert [p.name for p in mine.iterdir()] == ["thesis.txt"]
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(DataError, match="is not a digits folder made by trainlab"):
        ensure_digits_tree(tmp_path / "a_file")

    empty = tmp_path / "empty"
    empty.mkdir()
    ensure_digits_tree(empty)
    assert json.loads((empty / MARKER).read_text())["complete"] is True
    assert len(list((empty / "train").rglob("*.JPEG"))) + len(list((empty / "val" / "images").iterdir())) \
        + len(list((empty / "test" / "images").iterdir())) == 1797
    stamp = (empty / "wnids.txt").stat().st_mtime_ns
    ensure_digits_tree(empty)  # complete: read, never written again
    assert (empty / "wnids.txt").stat().st_mtime_ns == stamp

    # An interrupted write of trainlab's own (marker says incomplete) is redone.
    (empty / MARKER).write_text(json.dumps({"made_by": "trainlab", "complete": False}))
    (empty / "train" / "d3").rename(empty / "half")
    (empty / "half").rename(empty / "train" / "d3_partial")
    ensure_digits_tree(empty)
    assert (empty / "train" / "d3").is_dir() and not (empty / "train" / "d3_partial").exists()


@pytest.mark.slow
def test_digits_default_to_the_cache_folder(tmp_path, capsys):
    code, out, err = run(capsys, "train", *FAST, "dataset=digits", "trainer.limit_train_batches=1",
                         "trainer.limit_val_batches=1", "hydra.run.dir=run")
    assert code == 0, err
    assert (tmp_path / "cache" / "digits" / MARKER).is_file()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data"]["cache"]["dir"].startswith(
        str(tmp_path / "cache" / "decoded" / "digits-"))
    # "Score my new images" with the demo run: refused before anything is written, the photos intact.
    pets = _photos(tmp_path / "pets")
    before = hashes(pets, tmp_path / "run")
    assert_one_line(*shell("evaluate", "ckpt=run", "split=test", f"dataset.root={pets}"),
                    "is not a digits folder made by trainlab")
    assert_untouched(before, pets, tmp_path / "run", new_allowed="-none-")


# --- data: one line for each kind of broken input; data folders never change -----------------------------------

def _break(root: Path, how: str) -> None:
    if how == "wnid_without_folder":
        (root / "wnids.txt").write_text("n01\nn02\nn03\nn04\n")
    elif how == "annotation_of_missing_file":
        (root / "val" / "images" / "val_0.JPEG").unlink()
    elif how == "empty_class":
        for f in (root / "train" / "n02" / "images").iterdir():
            f.unlink()
    elif how == "zero_byte":
        (root / "train" / "n01" / "images" / "n01_0.JPEG").write_bytes(b"")
    elif how == "truncated":
        path = root / "train" / "n01" / "images" / "n01_1.JPEG"
        path.write_bytes(path.read_bytes()[:200])
    elif how == "text_named_jpeg":
        (root / "train" / "n03" / "images" / "n03_2.JPEG").write_text("not an image")


@pytest.mark.slow
@pytest.mark.parametrize("how, message", [
    ("wnid_without_folder", "train/n04/images is missing (wnids.txt lists n04)"),
    ("annotation_of_missing_file", "names val_0.JPEG, which is not in"),
    ("empty_class", "train/n02/images holds no images"),
    ("zero_byte", "n01_0.JPEG"),
    ("truncated", "n01_1.JPEG"),
    ("text_named_jpeg", "n03_2.JPEG"),
])
def test_broken_tiny_imagenet_is_one_line(tmp_path, capsys, how, message):
    root = write_tiny_imagenet(tmp_path / "tiny dätä" / "tiny-imagenet-200")
    _break(root, how)
    before = hashes(root)
    line = assert_one_line(*shell("train", "dataset=tiny_imagenet", f"dataset.root='{root}'",
                                "dataset.batch_size=4", *FAST), message)
    if how in ("zero_byte", "truncated", "text_named_jpeg"):
        assert "dataset.skip_bad_images=true" in line
    assert_untouched(before, root)


@pytest.mark.slow
@pytest.mark.parametrize("dataset, make, message", [
    ("tiny_imagenet", lambda p: None, "does not exist; get tiny-imagenet-200.zip"),
    ("tiny_imagenet", lambda p: p.write_text("a file"), "is a file but not an archive trainlab reads"),
    ("tiny_imagenet", lambda p: p.mkdir(), "wnids.txt is missing"),
    ("image_folder", lambda p: p.mkdir(), "has no class folders"),
    ("image_folder", lambda p: (p / "cats").mkdir(parents=True), "cats holds no images"),
])
def test_missing_wrong_and_empty_roots(tmp_path, capsys, dataset, make, message):
    root = tmp_path / "data"
    make(root)
    before = hashes(tmp_path)
    assert_one_line(*shell("train", f"dataset={dataset}", f"dataset.root={root}", *FAST), message)
    assert_untouched(before, root) if root.is_dir() else None


def test_odd_but_valid_files_are_read(tmp_path):
    """Spaces and unicode in paths, a PNG named .JPEG, huge and odd-sized images, and files that are not
    images at all (skipped by extension) all work."""
    root = _photos(tmp_path / "my phötos 2026", classes=("chat noir", "hund"), per_class=4)
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "hund" / "png inside.JPEG", format="PNG")
    Image.fromarray(np.full((3000, 4000, 3), 200, np.uint8)).save(root / "hund" / "huge.jpg", quality=50)
    Image.fromarray(np.full((3, 400, 3), 90, np.uint8)).save(root / "chat noir" / "sliver.png")
    (root / "hund" / "notes.txt").write_text("not an image")
    (root / "chat noir" / ".DS_Store").write_bytes(b"\0\1")
    before = hashes(root)
    data = component("dataset", "image_folder", root=str(root), image_size=32, batch_size=4, val_fraction=0.25)
    data.setup()
    assert sum(len(s) for s in data.splits.values()) == 11
    assert data.splits["train"].images.shape[1:] == (3, 32, 32)
    assert_untouched(before, root)


@pytest.mark.slow  # seconds of training: in the full suite, not the editing subset
def test_bad_images_can_be_skipped_and_are_counted(tmp_path, capsys):
    root = write_tiny_imagenet(tmp_path / "t")
    _break(root, "zero_byte")
    code, out, err = run(capsys, "train", "dataset=tiny_imagenet", f"dataset.root={root}", "dataset.batch_size=4",
                         "dataset.skip_bad_images=true", *FAST, "hydra.run.dir=run")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "run.json").read_text())["data"]["skipped_images"] == {"train": 1}


def test_a_writable_data_folder_caches_in_the_cache_folder_too(tmp_path):
    root = write_tiny_imagenet(tmp_path / "shared" / "tiny")
    before = hashes(root)
    data = component("dataset", "tiny_imagenet", root=str(root), batch_size=4)
    data.setup()
    assert Path(data.cache_info["dir"]).is_relative_to(tmp_path / "cache")
    assert_untouched(before, root, new_allowed="-none-")


# --- the decoded-image cache is never trusted -------------------------------------------------------------------

def _cache_inputs(tmp_path) -> tuple[list[str], Path]:
    root = write_tiny_imagenet(tmp_path / "t")
    return sorted(str(p) for p in (root / "train").rglob("*.JPEG")), tmp_path / "c"


@pytest.mark.parametrize("damage", ["truncate", "delete_meta", "delete_array", "foreign_meta"])
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    paths, cache = _cache_inputs(tmp_path)
    truth, _ = decode.decode_files(paths, 64, "x")
    decode.load_or_decode(paths, 64, "train", cache, source="t")
    array = next(cache.glob("train-64px-*.npy"))
    if damage == "truncate":
        array.write_bytes(array.read_bytes()[:1000])
    elif damage == "delete_meta":
        array.with_suffix(".json").unlink()
    elif damage == "delete_array":
        array.unlink()
    else:
        array.with_suffix(".json").write_text(json.dumps({"format": "someone else's", "skipped": []}))
    images, meta = decode.load_or_decode(paths, 64, "train", cache, source="t")
    assert torch.equal(images, truth)
    again, _ = decode.load_or_decode(paths, 64, "train", cache, source="t")  # the rebuilt one is read back
    assert torch.equal(again, truth) and sorted(p.name for p in cache.glob("*.npy")) == [array.name]


def test_stale_cache_is_replaced_and_only_trainlabs_files_are_removed(tmp_path):
    paths, cache = _cache_inputs(tmp_path)
    decode.load_or_decode(paths, 64, "train", cache, source="t")
    old = next(cache.glob("train-64px-*.npy"))
    users_own = cache / "train-64px-mine.npy"
    np.save(users_own, np.zeros(3))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(paths[0])  # the data changed: the cache is stale
    images, _ = decode.load_or_decode(paths, 64, "train", cache, source="t")
    assert int(images[0].sum()) == 0 and not old.exists() and users_own.is_file()


def test_two_runs_building_one_cache_take_turns(tmp_path, monkeypatch):
    paths, cache = _cache_inputs(tmp_path)
    decoded, real = [], decode.decode_files

    def counting(*args, **kwargs):
        decoded.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "decode_files", counting)
    results = [None, None]

    def build(k):
        results[k] = decode.load_or_decode(paths, 64, "train", cache, source="t")[0]

    threads = [threading.Thread(target=build, args=(k,)) for k in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert torch.equal(results[0], results[1]) and len(decoded) == 1  # the second waited and read the first's
    assert len(list(cache.glob("*.npy"))) == 1 and not list(cache.glob("*.tmp"))


# --- config: one line before anything is written ----------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["optimizer=adm"], "unknown optimizer 'adm'"),
    (["trainer.epoch=3"], "trainer.epoch"),
    (["+experiment=quickstrat"], "unknown experiment 'quickstrat'"),
    (["trainer.epochs=abc"], "trainer.epochs"),
    (["optimizer.lr=0"], "optimizer.lr must be > 0"),
    (["dataset.batch_size=-1"], "dataset.batch_size must be >= 1"),
    (["trainer.limit_train_batches=0"], "trainer.limit_train_batches must be >= 1"),
    (["trainer.precision=16-mixed"], "16-mixed needs a GPU"),
    (["device=tpu"], "unknown device 'tpu'"),
    (["dataset.root=/my dätä,/b"], "put values with spaces or non-ASCII characters in quotes"),
])
def test_config_mistakes_stop_before_a_run_directory(tmp_path, capsys, args, message):
    assert_one_line(*shell("train", *args), message)
    assert not (tmp_path / "outputs").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_absent_gpu_is_one_line(tmp_path, capsys):
    assert_one_line(*shell("train", "device=cuda"), "no CUDA GPU is visible", "device=cpu")
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["model._target_=nowhere.Model"], "cannot build model (nowhere.Model)"),
    (["model=resnet18", "model.weights=IMAGENET1K_V9"], "neither a file nor one of resnet18's torchvision weights"),
])
def test_config_mistakes_found_when_building(capsys, args, message):
    fake = ["dataset=fake", "dataset.train_size=64", "dataset.val_size=16", "dataset.image_size=32"]
    assert_one_line(*shell("train", *fake, *FAST, *args), message)


def test_pretrained_weights_offline_is_one_line(tmp_path, capsys, monkeypatch):
    from urllib.error import URLError

    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert_one_line(*shell("train", "dataset=fake", *FAST, "model=resnet18", "model.weights=IMAGENET1K_V1"),
                    "cannot download resnet18 weights IMAGENET1K_V1", "resnet18-f37072fd.pth",
                    str(tmp_path / "torch" / "hub" / "checkpoints"), "model.weights=null")


# --- runs: an existing run is never overwritten by accident ------------------------------------------------------

@pytest.fixture(scope="module")
def _trained_once(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("trained") / "done"
    cli.main(["train", "dataset=fake", "dataset.train_size=64", "dataset.val_size=16", "dataset.image_size=16", *FAST,
              "trainer.epochs=2", "checkpoint.every_n_epochs=1", "scheduler=step",  # step: it may train longer
              f"hydra.run.dir={where}"])
    return where


@pytest.fixture
def finished_run(_trained_once, tmp_path) -> Path:
    """A finished 2-epoch run (epoch_001, epoch_002, best, last) of this test's own."""
    return Path(shutil.copytree(_trained_once, tmp_path / "done"))


def test_new_run_into_an_existing_run_is_refused(finished_run, capsys):
    before = hashes(finished_run)
    assert_one_line(*shell("train", "dataset=fake", *FAST, f"hydra.run.dir={finished_run}"),
                    "already holds a trainlab run", f"resume={finished_run}", "overwrite=true")
    assert_untouched(before, finished_run, new_allowed="-none-")


@pytest.mark.slow  # seconds of training: in the full suite, not the editing subset
def test_overwrite_replaces_the_earlier_run(finished_run, capsys):
    code, _, err = run(capsys, "train", "dataset=fake", "dataset.train_size=64", "dataset.val_size=16",
                       "dataset.image_size=16", *FAST, f"hydra.run.dir={finished_run}", "overwrite=true")
    assert code == 0, err
    assert len(list((finished_run / "tensorboard").iterdir())) == 1  # the old event file is gone, not mixed in
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert len((finished_run / "metrics.csv").read_text().splitlines()) == 2


def test_a_users_folder_is_never_a_run_directory(tmp_path, capsys):
    mine = _photos(tmp_path / "holiday")
    before = hashes(mine)
    for extra in ([], ["overwrite=true"]):
        assert_one_line(*shell("train", "dataset=fake", *FAST, f"hydra.run.dir={mine}", *extra),
                        "is not empty and holds no trainlab run")
    assert_untouched(before, mine, new_allowed="-none-")


def test_another_tools_output_folder_is_never_overwritten(tmp_path, capsys):
    """A Hydra/Lightning output folder has .hydra/, checkpoints/ and metrics.csv too, but no trainlab mark."""
    other = tmp_path / "lightning_run"
    (other / ".hydra").mkdir(parents=True)
    (other / "checkpoints").mkdir()
    (other / "checkpoints" / "epoch=3.ckpt").write_bytes(b"someone else's weights")
    (other / "metrics.csv").write_text("epoch,loss\n")
    before = hashes(other)
    assert_one_line(*shell("train", "dataset=fake", *FAST, f"hydra.run.dir={other}", "overwrite=true"),
                    "holds no trainlab run")
    assert_untouched(before, other, new_allowed="-none-")


def test_a_run_directory_in_use_is_refused(tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    lock = FolderLock(busy)
    assert lock.acquire()  # what a first run holds while it writes
    try:
        assert_one_line(*shell("train", "dataset=fake", *FAST, f"hydra.run.dir={busy}"), "is in use")
    finally:
        lock.release()
    assert [p.name for p in busy.iterdir()] == [".trainlab.lock"]


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path):
    first = tmp_path / "outputs" / "12-00-00"
    assert free_run_dir(first) == first
    first.mkdir(parents=True)
    (first / "run.json").write_text("{}")
    assert free_run_dir(first) == first.with_name("12-00-00_1")


def test_unwritable_output_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "plain_file").write_text("x")
    assert_one_line(*shell("train", "dataset=fake", *FAST, f"hydra.run.dir={tmp_path / 'plain_file' / 'run'}"),
                    "cannot create the run directory", "hydra.run.dir")


def test_read_only_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if "ro" in self.parts:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert_one_line(*run(capsys, "train", "dataset=fake", *FAST, f"hydra.run.dir={tmp_path / 'ro' / 'run'}"),
                    "cannot create the run directory", "Read-only file system")


def test_a_failed_write_during_the_run_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import trainlab.loggers

    def unwritable(folder, *args, **kwargs):
        raise OSError(errno.EACCES, "Permission denied", folder)

    monkeypatch.setattr(trainlab.loggers, "SummaryWriter", unwritable)
    args = ["train", "dataset=fake", *FAST]
    assert_one_line(*run(capsys, *args, "hydra.run.dir=a"), f"cannot write {tmp_path / 'a' / 'tensorboard'}",
                    "Permission denied", "intact")
    monkeypatch.setenv("TRAINLAB_DEBUG", "1")
    code, out, err = run(capsys, *args, "hydra.run.dir=b")
    assert code != 0 and "Traceback" in err and "PermissionError: [Errno 13] Permission denied" in err


def test_existing_sweep_directory_is_refused(tmp_path, capsys):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "multirun.yaml").write_text("{}")
    args = ["train", "-m", "dataset=fake", "optimizer=sgd,adam", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert_one_line(*shell(*args), "already holds a sweep")


@pytest.mark.slow
@pytest.mark.parametrize("spec, extra, message", [
    ("missing", [], "no such checkpoint file or run directory"),
    ("no_checkpoints", [], "has no interrupted.ckpt or last.ckpt"),
    ("run", ["model.width=8"], "a checkpoint's model cannot change"),
    ("run", ["model=mlp"], "picks a config group option"),
])
def test_bad_resumes_are_one_line(finished_run, capsys, tmp_path, spec, extra, message):
    (tmp_path / "no_checkpoints").mkdir()
    target = {"missing": tmp_path / "nope", "no_checkpoints": tmp_path / "no_checkpoints", "run": finished_run}[spec]
    before = hashes(finished_run)
    assert_one_line(*shell("train", f"resume={target}", *extra), message)
    assert_untouched(before, finished_run, new_allowed="-none-")


@pytest.mark.slow
def test_evaluate_after_the_data_moved(tmp_path, capsys):
    root = write_tiny_imagenet(tmp_path / "data" / "tiny")
    code, _, err = run(capsys, "train", "dataset=tiny_imagenet", f"dataset.root={root}", "dataset.batch_size=4", *FAST,
                       "hydra.run.dir='rün 1'")
    assert code == 0, err
    run_dir = tmp_path / "rün 1"
    root.rename(tmp_path / "data" / "moved")
    before = hashes(run_dir)
    assert_one_line(*shell("evaluate", "ckpt='rün 1'"), f"no longer at {root}",
                    "dataset.root=<where the data is now>")
    assert_untouched(before, run_dir, new_allowed="-none-")
    code, out, err = run(capsys, "evaluate", "ckpt='rün 1'", f"dataset.root={tmp_path / 'data' / 'moved'}")
    assert code == 0, err
    assert len(list((run_dir / "eval").glob("best-val-*/metrics.json"))) == 1


def test_evaluate_of_a_loose_checkpoint_writes_under_outputs(finished_run, tmp_path, capsys):
    loose = tmp_path / "downloads"
    loose.mkdir()
    (loose / "model.ckpt").write_bytes((finished_run / "checkpoints" / "best.ckpt").read_bytes())
    code, out, err = run(capsys, "evaluate", f"ckpt={loose / 'model.ckpt'}")
    assert code == 0, err
    assert [p.name for p in loose.iterdir()] == ["model.ckpt"]
    assert list((tmp_path / "outputs" / "eval").rglob("metrics.json"))


def test_compare_never_writes_into_a_users_folder(finished_run, tmp_path, capsys):
    mine = _photos(tmp_path / "album")
    before = hashes(mine)
    ckpt = finished_run / "checkpoints"
    assert_one_line(*shell("compare", str(ckpt / "epoch_001.ckpt"), str(ckpt / "epoch_002.ckpt"), f"out={mine}"),
                    "is not empty and holds no earlier comparison")
    assert_untouched(before, mine, new_allowed="-none-")


@pytest.mark.slow
def test_full_disk_is_one_line_and_keeps_the_last_checkpoint(finished_run, tmp_path):
    """A file-size limit (what a full disk looks like to a writer) hits the next checkpoint: one line, and the
    run's earlier checkpoints and record are byte-identical."""
    before = hashes(finished_run / "checkpoints")
    limit = (finished_run / "checkpoints" / "last.ckpt").stat().st_size // 2

    result = run_limited("train", f"resume={finished_run}", "trainer.epochs=3", cwd=tmp_path, max_file_bytes=limit)
    assert_one_line(*result, "File too large", "free some disk space")
    assert_untouched(before, finished_run / "checkpoints", new_allowed="-none-")
