"""Trouble real machines and users make: resuming a run with more epochs under every scheduler, a write that fails
(a file-size limit, as a full disk or a quota looks to a writer) in every writer, and run folders whose files are
empty, truncated or not what trainlab wrote. Each ends in a run that trains and says how, or in one line."""

from __future__ import annotations

import json
import re
import shutil

import pandas as pd
import pytest

from trainlab.core.errors import TrainlabError
from trainlab.record.run_dir import read_json, read_metrics

from helpers import FAST, assert_one_line, assert_untouched, hashes, run, run_here, run_limited, shell

SCHEDULERS = ["cosine", "cyclic", "exponential", "multistep", "none", "onecycle", "plateau", "step"]
FITTED = {"cosine": "T_max", "onecycle": "total_steps"}  # their length comes from trainer.epochs
SMALL = [*FAST, "dataset.train_size=64", "dataset.val_size=16", "dataset.batch_size=16"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-epoch run per scheduler."""
    root = tmp_path_factory.mktemp("schedules")
    for name in SCHEDULERS:
        code, _, err = _run(f"scheduler={name}", f"hydra.run.dir={root / name}")
        assert code == 0, f"{name}: {err[-2000:]}"
    return root


def _run(*args) -> tuple[int, str, str]:
    """`trainlab train` of SMALL in this process, for module fixtures."""
    return run_here("train", *SMALL, *args)


@pytest.mark.slow  # sixteen short runs
@pytest.mark.parametrize("name", SCHEDULERS)
def test_more_epochs_continue_with_a_defined_schedule_or_are_refused_with_the_way_to_train_longer(
        finished, tmp_path, capsys, name):
    run_dir = tmp_path / name
    shutil.copytree(finished / name, run_dir)
    before = hashes(run_dir)
    code, out, err = run(capsys, "train", f"resume={run_dir}", "trainer.epochs=4")
    if name in FITTED:  # torch's cosine restarts past its length; one-cycle raised after its last step
        line = assert_one_line(code, out, err, f"scheduler={name} is fitted to the run's 2 epochs", FITTED[name],
                               f"model.weights={run_dir / 'checkpoints' / 'last.ckpt'}", "trainer.epochs=4")
        assert f"scheduler={name}" in line and "+debug=fast" in line  # the run's own overrides, to copy
        assert_untouched(before, run_dir, new_allowed="-none-")
        return
    assert code == 0, err
    said = re.search(r"resume: trainer.epochs 2 -> 4: scheduler=\S+ continues as configured; the learning rate of "
                     r"epochs 3-4: (\S+), (\S+)", (run_dir / "train.log").read_text())
    assert said, (run_dir / "train.log").read_text()[-2000:]
    history = pd.read_csv(run_dir / "metrics.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    # What the log promised is what the epochs trained at (metrics.csv's lr: each epoch's first), never 0.
    assert [f"{v:.3g}" for v in history["lr"].iloc[2:]] == list(said.groups()), history[["epoch", "step", "lr"]]
    assert (history["lr"] > 0).all()


def test_a_schedule_that_would_sit_at_lr_zero_is_refused(finished, tmp_path, capsys):
    """A cosine of its own fixed period (T_max=2) ends an epoch at eta_min=0: the next epoch would not train."""
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *SMALL, "scheduler=cosine", "scheduler.T_max=2", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    before = hashes(run_dir)
    assert_one_line(*shell("train", f"resume={run_dir}", "trainer.epochs=4"),
                    "would train epoch 3 at lr 0", "model.weights=")
    assert_untouched(before, run_dir, new_allowed="-none-")


def _no_temporary_files(*folders) -> None:
    left = [p for folder in folders for p in folder.rglob("*.tmp")]
    assert not left, f"temporary files left behind: {left}"


@pytest.mark.slow  # a ResNet-18 run, and its resume in a process of its own
def test_a_checkpoint_too_large_for_the_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, capsys):
    """The story: a ResNet-18 checkpoint (~90 MB with its optimizer) crosses a 20 MB limit; torch's zip writer
    reports that as RuntimeError('... unexpected pos ...'), which used to end in a traceback and a .tmp file."""
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *SMALL, "model=resnet18", "model.small_stem=true", "trainer.epochs=1",
                       "scheduler=none",
                       f"hydra.run.dir={run_dir}")
    assert code == 0, err
    before = hashes(run_dir / "checkpoints")
    result = run_limited("train", f"resume={run_dir}", "trainer.epochs=2", cwd=tmp_path,
                         max_file_bytes=20 * 1024 * 1024)
    line = assert_one_line(*result, "File too large", "free some disk space", status=2)
    assert str(run_dir / "checkpoints") in line and "previous checkpoints are intact" in line
    assert_untouched(before, run_dir / "checkpoints", new_allowed="-none-")
    _no_temporary_files(run_dir)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("small") / "run"
    code, _, err = _run(f"hydra.run.dir={run_dir}", "checkpoint.every_n_epochs=1")
    assert code == 0, err[-2000:]
    return run_dir


@pytest.mark.slow  # a process per writer, under its file-size limit
@pytest.mark.parametrize("command", ["export", "predict", "report", "compare", "evaluate"])
def test_every_writer_fails_in_one_line_and_leaves_what_was_written_intact(small_run, tmp_path, command):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run, run_dir)
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(next((run_dir / "plots").glob("*.png")), images / "a.png")
    before = hashes(run_dir)
    ckpt = run_dir / "checkpoints"
    args = {"export": ["export", f"ckpt={run_dir}", "format=safetensors", f"out={tmp_path / 'out'}"],
            "predict": ["predict", f"ckpt={run_dir}", f"input={images}", f"out={tmp_path / 'out'}"],
            "report": ["report", str(run_dir)],
            "compare": ["compare", str(ckpt / "epoch_001.ckpt"), str(ckpt / "epoch_002.ckpt"),
                        f"out={tmp_path / 'out'}"],
            "evaluate": ["evaluate", f"ckpt={run_dir}", f"hydra.run.dir={tmp_path / 'out'}"]}[command]
    assert_one_line(*run_limited(*args, cwd=tmp_path, max_file_bytes=500), "File too large", "free some disk space")
    if command == "compare":  # the checkpoints are evaluated first, beside their run (in trainlab's eval/)
        assert_untouched(before, run_dir, new_allowed="eval")
    elif command != "report":  # report writes into the run folder, beside what it holds: those stay as they were
        assert_untouched(before, run_dir, new_allowed="-none-")
    else:
        changed = [p for p, h in before.items() if hashes(run_dir).get(p) != h]
        assert not changed, changed
    _no_temporary_files(run_dir, tmp_path / "out") if (tmp_path / "out").exists() else _no_temporary_files(run_dir)


@pytest.mark.slow
def test_a_decoded_cache_too_large_for_the_disk_is_one_line(tiny_root, tmp_path):
    # At Tiny-ImageNet's own 64 pixels (not +debug=fast's 16) its 18 images are ~220 kB: past the limit.
    result = run_limited("train", *FAST, "dataset=tiny_imagenet", "dataset.image_size=64", f"dataset.root={tiny_root}",
                         f"dataset.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                         max_file_bytes=60_000)
    assert_one_line(*result, "decoded-image cache", "File too large")
    _no_temporary_files(tmp_path / "cache")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["empty", "truncated", "not csv", "no epochs"])
def test_a_damaged_metrics_csv_is_one_line_in_report_diagnose_and_a_damaged_row_in_runs(small_run, tmp_path,
                                                                                       capsys, damage):
    run_dir = tmp_path / "runs" / "run"
    shutil.copytree(small_run, run_dir)
    metrics = run_dir / "metrics.csv"
    text = metrics.read_text()
    metrics.write_text({"empty": "", "truncated": text[: len(text) // 3].rsplit("\n", 1)[0][:40],
                        "not csv": "\x00\x01garbage\n\"unclosed", "no epochs": "a,b\n"}[damage])
    for command in (["report", str(run_dir)], ["diagnose", str(run_dir)]):
        assert_one_line(*shell(*command), str(metrics), "is damaged")
    code, out, err = run(capsys, "runs", str(tmp_path / "runs"))
    assert code == 0, err
    assert "damaged" in out.splitlines()[1] and str(metrics) in err


def test_damaged_json_files_are_one_line_naming_them(small_run, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "run"
    shutil.copytree(small_run, run_dir)
    (run_dir / "summary.json").write_text('{"stopped": "compl')
    assert_one_line(*shell("report", str(run_dir)), str(run_dir / "summary.json"), "not valid JSON")
    code, out, err = run(capsys, "runs", str(tmp_path / "runs"))
    assert code == 0 and "damaged" in out
    (run_dir / "summary.json").write_text("[1, 2]")  # valid JSON, but not what trainlab writes
    with pytest.raises(TrainlabError, match="not a JSON object"):
        read_json(run_dir, "summary.json")
    (run_dir / ".hydra" / "overrides.yaml").write_text("{: bad")
    code, out, err = run(capsys, "runs", str(tmp_path / "runs"))
    assert code == 0 and "damaged" in out


@pytest.mark.slow
def test_a_compare_of_a_damaged_evaluation_is_one_line(small_run, tmp_path, capsys):
    code, _, err = run(capsys, "evaluate", f"ckpt={small_run}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert code == 0, err
    (tmp_path / "eval" / "predictions.csv").write_text("")
    assert_one_line(*shell("compare", str(tmp_path / "eval"), str(small_run)), "predictions.csv", "damaged")
    (tmp_path / "eval" / "metrics.json").write_text("")
    assert_one_line(*shell("compare", str(tmp_path / "eval"), str(small_run)), "metrics.json", "not valid JSON")


def test_read_metrics_accepts_what_the_recorder_wrote(small_run):
    history = read_metrics(small_run)
    assert history["epoch"].tolist() == [1, 2] and json.loads((small_run / "summary.json").read_text())


def test_a_damaged_export_description_is_one_line(small_run, tmp_path, capsys):
    code, _, err = run(capsys, "export", f"ckpt={small_run}", "format=safetensors", f"out={tmp_path / 'export'}")
    assert code == 0, err
    (tmp_path / "export" / "model.json").write_text('{"format": "safet')
    assert_one_line(*shell("evaluate", f"ckpt={tmp_path / 'export'}"), "model.json", "damaged")
