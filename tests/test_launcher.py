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

from trainlab.cli.placement import DevicePool, Unplaceable, cpu_jobs_at_once, cpu_share, visible_gpus
from trainlab.record.sweep import job_saved

from helpers import FAST, LONGER_STEPS, assert_one_line, hashes, run, shell, start_cli, wait_for


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


def test_a_cpu_sweep_runs_one_job_per_eight_cores_unless_told():
    """The documented default (docs/sweeps.md): a 2-core laptop runs the jobs one after another, a 64-core server 8
    at once, never more than the sweep has; hydra.launcher.jobs=N overrides it (the launcher tests below)."""
    assert cpu_jobs_at_once(2, 4)[0] == 1 and cpu_jobs_at_once(16, 4)[0] == 2
    assert cpu_jobs_at_once(64, 100)[0] == 8 and cpu_jobs_at_once(64, 3)[0] == 3


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["jobs", "jobs_per_device"])
def test_a_bad_launcher_setting_is_one_line(tmp_path, capsys, monkeypatch, setting):
    monkeypatch.chdir(tmp_path)
    code, out, err = shell("train", "-m", *FAST, "seed=0,1", "hydra/launcher=parallel",
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
def test_fail_fast_stops_launching_at_the_first_failure(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    code, out, err = run(capsys, "train", "-m", *FAST, "optimizer.lr=0.05,-1,0.05", "hydra/launcher=parallel",
                         "hydra.launcher.jobs=1", "hydra.launcher.fail_fast=true", f"hydra.sweep.dir={sweep}")
    assert code == 1, err[-3000:]
    console = out + err
    assert "job 1 failed: " in console and "Invalid learning rate: -1" in console
    assert "hydra.launcher.fail_fast=true: job 1 failed, so no new job starts (1 left" in console
    assert "1 job(s) of the sweep failed" in console and "Traceback" not in console
    assert (sweep / "0" / "summary.json").is_file() and (sweep / "1" / "error.txt").is_file()
    assert not (sweep / "2").exists()  # (without fail_fast it runs: the basic launcher's tests in test_sweep.py)


@pytest.mark.parametrize("reason, line", [
    ("SIGTERM at epoch 2, batch 4; saved /s/2/checkpoints/interrupted.ckpt", "saved checkpoints/interrupted.ckpt"),
    ("SIGTERM at the end of epoch 1; saved last.ckpt", "saved checkpoints/last.ckpt"),
    (None, "saved nothing new: it continues from its last checkpoint"),  # killed before it wrote its summary
])
def test_a_stopped_jobs_line_names_what_it_saved(tmp_path, reason, line):
    if reason:
        (tmp_path / "summary.json").write_text(json.dumps({"stopped": "interrupted", "stop_reason": reason}))
    assert job_saved(tmp_path) == line


@pytest.mark.slow
def test_four_jobs_two_at_once_overlap_a_sigterm_stops_them_and_resume_continues_them(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    args = ["-m", *FAST, *LONGER_STEPS, "dataset.train_size=620", "trainer.log_every_n_steps=2", "seed=0,1,2,3",
            "hydra/launcher=parallel", "hydra.launcher.jobs=2", f"hydra.sweep.dir={sweep}"]
    proc = start_cli(args, tmp_path, log)
    wait_for(log, "job 3 started", proc, timeout=300)  # after jobs 0 and 1 finished
    wait_for(sweep / ".launcher" / "job-3.log", "epoch 1 train 4/", proc, timeout=300)  # (even steps logged)
    # Job 3 is training; job 2, started a moment before it, may have finished, be training, or (its spawned
    # interpreter still importing torch on a loaded machine) not have started training yet.
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    summaries = {j: sweep / str(j) / "summary.json" for j in range(4)}
    done = [j for j in range(4) if summaries[j].is_file() and json.loads(summaries[j].read_text())["stopped"]
            == "completed"]
    stopped = [j for j in range(4) if j not in done]
    assert done[:2] == [0, 1] and 3 in stopped, done
    finished = {j: record_of(sweep / str(j)) for j in done}
    text = log.read_text()
    assert f"continue it with trainlab train -m resume={sweep}" in text and "Traceback" not in text
    events = _events(text)
    assert events["started", 1] < events["ended", 0] and events["started", 0] < events["ended", 1]  # they overlap
    assert "2 at once (hydra.launcher.jobs)" in text and "[cpu, 1 thread]" in text
    assert "epoch 1/2" not in text  # per-job progress is in each job's files, not on the terminal
    assert json.loads((sweep / "sweep.json").read_text())["launcher"]["jobs_at_once"] == 2
    starting = [j for j in stopped if not summaries[j].is_file()]
    for job in starting:  # stopped before its training began: nothing to save, and the resume runs it
        assert job == 2 and f"job {job} stopped while starting" in text, text[-2000:]
    for job in (j for j in stopped if j not in starting):  # each training one saved where it was: mid-epoch, or
        reason = json.loads(summaries[job].read_text())["stop_reason"]  # (past the epoch's last batch) its end
        saved = "interrupted.ckpt" if ", batch " in reason else "last.ckpt"
        assert reason.startswith("SIGTERM at ") and reason.endswith(saved), reason
        assert (sweep / str(job) / "checkpoints" / saved).is_file()
        assert f"job {job} stopped (saved checkpoints/{saved})" in text
    assert (sweep / "3" / "checkpoints" / "interrupted.ckpt").is_file()  # it was seen training

    code, _, err = run(capsys, "train", "-m", f"resume={sweep}")
    assert code == 0, err[-3000:]
    for job in done:
        assert record_of(sweep / str(job)) == finished[job]  # a finished job is kept byte for byte, not respawned
        assert f"job {job} ({sweep / str(job)}) finished before: kept as it is" in err
    # The stopped ones continued from the step they stopped at (test_resume.py and test_sweep.py check such resumes
    # against runs never stopped, number for number) and ended their epochs.
    for job in stopped:
        if job not in starting:
            assert "continues from" in (sweep / ".launcher" / f"job-{job}.log").read_text()
            assert "resuming at epoch" in (sweep / str(job) / "train.log").read_text()
        assert list(pd.read_csv(sweep / str(job) / "metrics.csv")["epoch"]) == [1, 2]
    for job in range(4):
        assert "epoch 2/2" in (sweep / ".launcher" / f"job-{job}.log").read_text()
        assert "threads = 1 (auto: hydra/launcher=parallel runs 2 jobs at once" in (sweep / str(job) / "train.log"
                                                                                     ).read_text()
        assert json.loads((sweep / str(job) / "summary.json").read_text())["stopped"] == "completed"
    code, out, err = run(capsys, "runs", str(sweep))
    assert code == 0 and out.count("completed") == 4, out + err
