"""`trainlab runs` (every run in one table), `trainlab report A B` (any runs side by side), and the environment
each run records."""

from __future__ import annotations

import io
import json
import platform
import subprocess
from importlib.metadata import version

import pandas as pd
import pytest
import torch

from trainlab.core.fs import FolderLock

from helpers import FAST, assert_one_line, run, shell


def git(cwd, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.slow
def test_runs_lists_every_run_with_its_status_and_metrics(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    git(tmp_path, "init", "-q")
    (tmp_path / "train.py").write_text("# the user's code\n")
    git(tmp_path, "add", "train.py")
    git(tmp_path, "commit", "-q", "-m", "start")
    for name, extra in (("a", ["optimizer=adam"]), ("b", []), ("c", [])):
        code, _, err = run(capsys, "train", *FAST, "trainer.epochs=1", f"hydra.run.dir=outputs/day/{name}", *extra)
        assert code == 0, err
        (tmp_path / "train.py").write_text("# changed after run a\n")
    code, _, err = run(capsys, "train", "-m", *FAST, "trainer.epochs=1", "optimizer.lr=0.05,-1.0",
                       "hydra.sweep.dir=multirun/day/sweep")
    assert code == 1, err  # the lr=-1 job failed
    (tmp_path / "outputs/day/c/summary.json").unlink()  # as a kill -9 leaves it

    # The environment: this interpreter, this torch, the commit of the working directory and whether it changed.
    env_a = json.loads((tmp_path / "outputs/day/a/run.json").read_text())["environment"]
    env_b = json.loads((tmp_path / "outputs/day/b/run.json").read_text())["environment"]
    assert env_a["python"] == platform.python_version() and env_a["torch"] == str(torch.__version__)
    assert env_a["git"]["commit"] == git(tmp_path, "rev-parse", "HEAD")
    assert env_a["git"]["dirty"] is False and env_b["git"]["dirty"] is True
    assert f"torch=={version('torch')}" in (tmp_path / "outputs/day/a/requirements.txt").read_text().splitlines()

    with FolderLock(tmp_path / "outputs/day/b"):  # a run still being written
        code, out, err = run(capsys, "runs", "--csv")
    assert code == 0, err
    table = pd.read_csv(io.StringIO(out), dtype={"run": str})
    status = dict(zip(table["run"], table["status"]))
    assert status == {"outputs/day/a": "completed", "outputs/day/b": "running", "outputs/day/c": "killed",
                      "multirun/day/sweep/0": "completed", "multirun/day/sweep/1": "failed"}
    row = table.set_index("run").loc["outputs/day/a"]
    history = pd.read_csv(tmp_path / "outputs/day/a/metrics.csv")
    assert row["best val/acc1"] == pytest.approx(history["val/acc1"].max())
    assert row["final val/loss"] == pytest.approx(history["val/loss"].iloc[-1])
    assert row["images/s"] == pytest.approx(history["throughput/train_ips"].mean())
    assert "optimizer=adam" in row["overrides"] and row["epochs"] == 1

    code, out, _ = run(capsys, "runs", "--filter", "optimizer=adam", "--csv")
    assert list(pd.read_csv(io.StringIO(out))["run"]) == ["outputs/day/a"]
    code, out, _ = run(capsys, "runs", "multirun", "--sort", "status", "--csv")
    assert list(pd.read_csv(io.StringIO(out))["status"]) == ["completed", "failed"]
    code, out, _ = run(capsys, "runs")  # the table for people: one line per run, none wrapped
    assert code == 0 and len(out.strip().splitlines()) == 6 and "killed" in out
    assert_one_line(*shell("runs", "--sort", "best acc"), "did you mean best val/acc1")
    assert_one_line(*shell("runs", "--fliter", "a=b"), "unknown option --fliter; did you mean --filter?")

    # Any runs side by side, into a folder of their own.
    code, out, err = run(capsys, "report", "outputs/day/a", "multirun/day/sweep/0", "--out", "side")
    assert code == 0, err
    text = (tmp_path / "side" / "report.md").read_text()
    assert "2 runs side by side" in text and "| outputs/day/a |" in text and "multirun/day/sweep/0" in text
    assert_one_line(*shell("report", "outputs/day/a", str(tmp_path)), "holds no run")
