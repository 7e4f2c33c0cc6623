"""`hydra/launcher=parallel`: which devices each job gets (a plain function, tested with GPU counts this machine
lacks), and sweeps that run several jobs at once on the CPU with every guarantee of the basic launcher."""

from __future__ import annotations

import json
import os
import re
import signal
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import torch

from trainlab.cli.placement import DevicePool, Unplaceable, cpu_share, visible_gpus
from trainlab.engine import cpu_split, processes
from trainlab.record.sweep import job_saved

from helpers import FAST, LONGER_STEPS, assert_one_line, hashes, run, start_cli, wait_for


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


SMALL = cpu_split.Workload({"_target_": "trainlab.models.small_cnn", "_partial_": True, "width": 8, "dropout": 0.0,
                            "init": "default", "freeze": None, "in_channels": None}, (3, 16, 16), 10, 16)


def test_the_cpu_splits_timed_are_powers_of_two_up_to_the_cores_and_jobs():
    assert cpu_split.splits(2, 4) == [1, 2] and cpu_split.splits(16, 3) == [1, 2]
    assert cpu_split.splits(64, 100) == [1, 2, 4, 8] and cpu_split.splits(1, 4) == [1] and cpu_split.splits(8, 1) == [1]


def test_jobs_run_at_once_only_when_they_train_more_than_gain_faster():
    assert cpu_split.pick({1: 100.0, 2: 100 * (1 + cpu_split.GAIN) - 1}) == 1  # not enough to pay for processes
    assert cpu_split.pick({1: 100.0, 2: 115.0}) == 2 and cpu_split.pick({1: 100.0, 2: 80.0}) == 1
    assert cpu_split.pick({1: 100.0, 2: 140.0, 4: 150.0, 8: 120.0}) == 4


def test_short_jobs_run_one_at_a_time_where_starting_their_processes_costs_more_than_sharing_the_cores_gains():
    timing = cpu_split.Timing({1: 100.0, 2: 170.0}, {1: 0.0, 2: 2.0}, server=7.0)
    # 4 jobs of 500 images: one at a time 4 x 5 s in this process; 2 at once wait 7 s for their process server, then
    # 2 rounds of 2 s start-up + 500*2/170 s.
    short = cpu_split.expected_seconds(timing, 4, 500)
    assert short == {1: 20.0, 2: pytest.approx(7 + 2 * (2 + 1000 / 170), abs=0.1)}
    assert cpu_split.pick(timing.rates, short) == 1
    long = cpu_split.expected_seconds(timing, 4, 100_000)  # 1000 s against ~1194 s: the start-up is paid back
    assert cpu_split.pick(timing.rates, long) == 2


def _measure(table: dict[int, float], timed: list[int] | None = None):
    def measure(work, n, cores):
        if timed is not None:
            timed.append(n)
        return table[n], 5.0, (7.0 if n == 2 else 0.0)  # (the process server gets ready before the first n > 1)
    return measure


def test_the_split_is_measured_once_per_machine_and_model_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINLAB_CACHE_DIR", str(tmp_path))
    timed: list[int] = []
    rates = {1: 100.0, 2: 150.0, 4: 140.0, 8: 500.0}  # 8 is never timed: 4 was already slower than 2
    first = cpu_split.choose(SMALL, 16, 10, measure=_measure(rates, timed))
    assert (first.jobs, first.timing.cached, timed) == (2, False, [1, 2, 4])
    why = first.reason("m")
    one = torch.get_num_threads()  # one job at a time runs with the launcher's threads
    assert f"1 job x {one} thread{'s' if one > 1 else ''} 100; 2 jobs x 8 threads 150; 4 jobs x 4 threads 140" in why
    assert "2 at once trained 50% faster (the jobs' length is not in their config" in why
    again = cpu_split.choose(SMALL, 16, 10, images=10 ** 6, measure=_measure(rates, timed))  # the sweep's own rule
    assert (again.jobs, again.timing.cached, timed) == (2, True, [1, 2, 4]) and "cached" in again.reason("m")
    assert "2 at once is fastest" in again.reason("m")
    short = cpu_split.choose(SMALL, 16, 10, images=100, measure=_measure(rates, timed))
    assert short.jobs == 1 and "wait ~7 s for their process server, then each starts in ~5 s" in short.reason("m")
    assert short.sweep_s[2] == pytest.approx(7 + 5 * (5 + 100 * 2 / 150), abs=0.1)  # one wait, 5 rounds of 2
    bigger = cpu_split.Workload(SMALL.model, (3, 32, 32), 10, 16)  # another input: measured for itself
    slow = cpu_split.choose(bigger, 16, 10, measure=_measure({1: 100.0, 2: 105.0, 4: 90.0}))
    assert slow.jobs == 1 and not slow.timing.cached and "only 5% faster, under 10%" in slow.reason("m")


def test_a_jobs_length_is_read_from_its_config():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model": {**SMALL.model, "weights": "x.ckpt"}, "trainer": {"epochs": 3,
                            "limit_train_batches": None}, "dataset": {"image_size": 16, "batch_size": 8,
                                                                      "train_size": 100}})
    work, images = cpu_split.workload(cfg)
    assert work == cpu_split.Workload(SMALL.model, (3, 16, 16), 10, 8)  # the weights are not timed
    assert images == 300
    cfg.trainer.limit_train_batches = 5
    assert cpu_split.workload(cfg)[1] == 3 * 40
    del cfg.dataset["train_size"]
    cfg.trainer.limit_train_batches = None
    assert cpu_split.workload(cfg)[1] is None  # (image folders, Tiny-ImageNet: their size is read when they load)
    cfg.dataset.image_size = "${missing}"
    assert cpu_split.workload(cfg) == (None, None)  # that job fails by itself, with its own message


@pytest.mark.slow
def test_one_job_is_timed_here_and_a_timing_process_that_fails_says_why():
    # (A real timing of 1 and 2 jobs at once: scripts/bench_sweep.py's test, through the launcher's own code.)
    rate, startup, server = cpu_split.measure_split(SMALL, 1, 2)
    assert rate > 0 and startup == server == 0  # one job at a time: timed in this process, with nothing to start
    broken = cpu_split.Workload({**SMALL.model, "width": "wide"}, (3, 16, 16), 10, 16)
    with pytest.raises(RuntimeError, match="wide"):  # a process that fails says why, and the others stop waiting
        cpu_split.measure_split(broken, 2, 2)


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


def test_a_cpu_job_forks_from_the_forkserver_with_the_environment_of_its_start_and_a_cuda_job_is_spawned(monkeypatch):
    forkserver = processes.context(cuda=False)
    assert forkserver.get_start_method() == "forkserver" and processes.context(cuda=True).get_start_method() == "spawn"
    monkeypatch.setenv("TRAINLAB_PROBE", "set before")
    processes.wait_ready()  # (the server may start now, with TRAINLAB_PROBE in its environment, or have run before)
    seen = []
    for value in ("changed after the server started", None):
        if value is None:
            monkeypatch.delenv("TRAINLAB_PROBE")
        else:
            monkeypatch.setenv("TRAINLAB_PROBE", value)
        answers = forkserver.Queue()
        child = forkserver.Process(target=_adopting, args=(answers, processes.environment()))
        child.start()
        seen.append(answers.get(timeout=60))
        child.join(timeout=60)
    (parent, changed), (_, removed) = seen
    assert parent != os.getpid()  # forked by the server, which imported torch once, not started by this process
    assert changed == "changed after the server started" and removed is None


def _adopting(answers, env) -> None:
    processes.adopt(env)
    answers.put((os.getppid(), os.environ.get("TRAINLAB_PROBE")))


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
    proc.send_signal(signal.SIGTERM)  # job 3 is training; job 2, started a moment before it, may have finished
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM
    done = [j for j in range(4) if json.loads((sweep / str(j) / "summary.json").read_text())["stopped"] == "completed"]
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
    for job in stopped:  # each running one saved where it was: mid-epoch, or (past the epoch's last batch) its end
        reason = json.loads((sweep / str(job) / "summary.json").read_text())["stop_reason"]
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
