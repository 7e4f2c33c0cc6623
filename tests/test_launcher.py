"""`hydra/launcher=parallel`: which devices each job gets (a plain function, tested with GPU counts this machine
lacks), and sweeps that run several jobs at once on the CPU with every guarantee of the basic launcher."""

from __future__ import annotations

import json
import re
import signal
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from trainlab.cli.placement import DevicePool, Unplaceable, cpu_share, visible_gpus

from helpers import FAST, assert_one_line, hashes, run, run_cli, start_cli, wait_for


@pytest.mark.parametrize("gpus", [1, 4, 8])
def test_one_gpu_jobs_get_a_gpu_each_and_wait_when_all_are_taken(gpus):
    pool = DevicePool([str(i) for i in range(gpus)])
    taken = [pool.take(1) for _ in range(gpus)]
    assert sorted(g for t in taken for g in t) == [str(i) for i in range(gpus)]  # never two jobs on one GPU
    assert pool.take(1) is None and pool.slots == gpus
    pool.give_back(taken[-1])
    assert pool.take(1) == taken[-1]


@pytest.mark.parametrize("gpus", [4, 8])
def test_two_gpu_jobs_get_two_free_gpus(gpus):
    pool = DevicePool([str(i) for i in range(gpus)])
    pairs = [pool.take(2) for _ in range(gpus // 2)]
    assert all(len(p) == 2 for p in pairs) and len({g for p in pairs for g in p}) == gpus
    assert pool.take(2) is None and pool.take(1) is None
    pool.give_back(pairs[0])
    assert pool.take(1) is not None and pool.take(2) is None  # one GPU left of the pair: not enough for two


def test_a_job_that_needs_more_gpus_than_exist_cannot_be_placed_and_the_rest_can():
    pool = DevicePool(["0"])
    with pytest.raises(Unplaceable, match=r"needs 2 GPU\(s\) \(device.count=2\) but 1 is visible"):
        pool.take(2)
    assert pool.take(1) == ["0"]


def test_jobs_per_device_shares_a_gpu_and_spreads_the_load():
    pool = DevicePool(["0", "1"], jobs_per_device=2)
    assert [pool.take(1) for _ in range(4)] == [["0"], ["1"], ["0"], ["1"]] and pool.take(1) is None
    assert pool.slots == 4
    with pytest.raises(ValueError, match="jobs_per_device must be >= 1"):
        DevicePool(["0"], jobs_per_device=0)


def test_the_visible_gpus_are_the_launchers_own_and_cores_are_split():
    assert visible_gpus({}, 4) == ["0", "1", "2", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3,5"}, 2) == ["3", "5"]  # a job sees only what trainlab was given
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"}, 0) == []
    assert (cpu_share(2, 2), cpu_share(16, 3), cpu_share(2, 4)) == (1, 5, 1)


@pytest.mark.parametrize("setting", ["jobs", "jobs_per_device"])
def test_a_bad_launcher_setting_is_one_line(tmp_path, capsys, monkeypatch, setting):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "train", "-m", *FAST, "seed=0,1", "hydra/launcher=parallel",
                         f"hydra.launcher.{setting}=0", f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert_one_line(code, out, err, f"hydra.launcher.{setting} must be >= 1 (got 0)")
    assert not (tmp_path / "sweep" / "0").exists()


def record_of(folder: Path) -> dict[str, str]:
    """A job's files as they were, without what a later visit adds: its lock file and .hydra/resume-*/."""
    return {p: h for p, h in hashes(folder).items() if ".trainlab.lock" not in p and "/resume-" not in p}


def _events(text: str) -> dict[tuple[str, int], datetime]:
    """(started|ended, job) -> time, from the launcher's console lines."""
    found = {}
    for stamp, job, what in re.findall(r"\[([\d-]+ [\d:,]+)\]\[HYDRA\] job (\d+) (started|completed|failed)", text):
        when = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f")
        found[("started" if what == "started" else "ended", int(job))] = when
    return found


@pytest.mark.slow
def test_four_jobs_two_at_once_overlap_and_keep_the_sweeps_record(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("train", "-m", *FAST, "seed=0,1,2,3", "hydra/launcher=parallel", "hydra.launcher.jobs=2",
                     f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    console = result.stdout + result.stderr
    events = _events(console)
    assert len(events) == 8, console
    assert events["started", 1] < events["ended", 0] and events["started", 0] < events["ended", 1]  # they overlap
    assert "2 at once (hydra.launcher.jobs)" in console and "[cpu, 1 thread]" in console
    assert "epoch 1/2" not in console  # per-job progress is in each job's files, not on the terminal
    assert (sweep / "sweep.json").is_file()
    for job in range(4):
        assert "epoch 2/2" in (sweep / ".launcher" / f"job-{job}.log").read_text()
        assert "threads = 1 (auto: hydra/launcher=parallel runs 2 jobs at once" in (sweep / str(job) / "train.log"
                                                                                     ).read_text()
        assert json.loads((sweep / str(job) / "summary.json").read_text())["stopped"] == "completed"
    listed = run_cli("runs", str(sweep), cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.count("completed") == 4, listed.stdout


@pytest.mark.slow
def test_fail_fast_stops_launching_at_the_first_failure(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("train", "-m", *FAST, "dataset.batch_size=8,100000,8", "hydra/launcher=parallel",
                     "hydra.launcher.fail_fast=true", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    console = result.stdout + result.stderr
    assert "job 1 failed: " in console and "larger than the" in console
    assert "hydra.launcher.fail_fast=true: job 1 failed, so no new job starts (1 left" in console
    assert "1 job(s) of the sweep failed" in console and "Traceback" not in console
    assert (sweep / "0" / "summary.json").is_file() and (sweep / "1" / "error.txt").is_file()
    assert not (sweep / "2").exists()  # (without fail_fast it runs: the basic launcher's tests in test_sweep.py)


@pytest.mark.slow
def test_sigterm_stops_the_running_jobs_and_resume_continues_them_exactly(tmp_path):
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    args = ["-m", *FAST, "dataset.train_size=800", "trainer.log_every_n_steps=2", "seed=0,1,2",
            "hydra/launcher=parallel", "hydra.launcher.jobs=2", f"hydra.sweep.dir={sweep}"]
    proc = start_cli(args, tmp_path, log)
    wait_for(log, "job 2 started", proc, timeout=300)  # after job 0 or 1 finished
    wait_for(sweep / ".launcher" / "job-2.log", "epoch 2 train 7/", proc, timeout=300)
    done = next(j for j in (0, 1) if (sweep / str(j) / "summary.json").is_file())
    finished = record_of(sweep / str(done))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    text = log.read_text()
    assert f"continue it with trainlab train -m resume={sweep}" in text and "Traceback" not in text
    assert (sweep / "2" / "checkpoints" / "interrupted.ckpt").is_file()
    resumed = run_cli("train", "-m", f"resume={sweep}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert record_of(sweep / str(done)) == finished  # a finished job is kept byte for byte
    assert "continues from" in (sweep / ".launcher" / "job-2.log").read_text()
    assert f"job {done} ({sweep / str(done)}) finished before: kept as it is" in resumed.stderr  # not respawned
    # It continued from the step it stopped at (test_resume.py and test_sweep.py check such resumes against runs
    # never stopped, number for number) and ended its epochs.
    assert "resuming at epoch 2, batch" in (sweep / "2" / "train.log").read_text()
    assert list(pd.read_csv(sweep / "2" / "metrics.csv")["epoch"]) == [1, 2]
