"""Sweeps that survive and summarise: a killed sweep resumed in place, an Optuna study continued, submitit's
requeue signal, seeds as mean ± std, and "did you mean" for misspelt names."""

from __future__ import annotations

import io
import json
import signal
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from trainlab.record.sweep import job_state

from helpers import FAST, LONGER_STEPS, TIMING, assert_one_line, hashes, run, shell, signal_when, start_cli, wait_for

# 12 batches of 32 per epoch. One thread, as the jobs and the reference runs in this process take: the same numbers.
SWEEP = [*FAST, *LONGER_STEPS, "dataset.train_size=400", "trainer.log_every_n_steps=2", "trainer.threads=1"]


def rows(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "metrics.csv").drop(columns=TIMING)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["model"]


def record_of(folder: Path) -> dict[str, str]:
    """A job's files as they were, without what a later visit may add: its lock file and .hydra/resume-*/."""
    return {p: h for p, h in hashes(folder).items() if ".trainlab.lock" not in p and "/resume-" not in p}


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["trainer.epoch=3"], "unknown key 'trainer.epoch'; did you mean trainer.epochs?"),
    (["optimizer.learning_rate=0.1"], "unknown key 'optimizer.learning_rate'; did you mean optimizer.lr?"),
    (["optimizer=adam", "optimizer.beta=[0.9,0.99]"], "did you mean optimizer.betas?"),
    (["optimzer=adam"], "unknown key 'optimzer'; did you mean optimizer?"),
    (["epochs=3"], "did you mean trainer.epochs?"),
    (["+experiment=quickstrt"], "unknown experiment 'quickstrt'; did you mean quickstart?"),
    (["optimizer=adm"], "unknown optimizer 'adm'; did you mean adam?"),
    (["-m", "trainer.epoch=1,2"], "unknown key 'trainer.epoch'; did you mean trainer.epochs?"),
    (["-m", "optimizer=sgd,adamm"], "unknown optimizer 'adamm'; did you mean adam"),
])
def test_misspelt_names_get_the_closest_valid_ones(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = shell("train", *FAST, *args)
    assert_one_line(code, out, err, message)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()  # refused before any run


@pytest.mark.slow
def test_misspelt_command_gets_the_closest_one(capsys):
    assert_one_line(*shell("evalute", "ckpt=x"), "unknown command 'evalute'; did you mean evaluate?")
    assert_one_line(*shell("report", ".", "--row", "seed"), "unknown option --row; did you mean --rows?")


def test_job_state_reads_what_a_job_directory_holds(tmp_path):
    new, failed, killed, stopped, done = (tmp_path / n for n in ("new", "failed", "killed", "stopped", "done"))
    new.mkdir()
    (new / ".hydra").mkdir()
    failed.mkdir()
    (failed / "error.txt").write_text("cannot build the optimizer")
    (killed / "checkpoints").mkdir(parents=True)  # a kill -9 after epoch 1: last.ckpt, no summary
    (killed / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (killed / "metrics.csv").write_text("epoch\n1\n")
    (stopped / "checkpoints").mkdir(parents=True)
    (stopped / "checkpoints" / "interrupted.ckpt").write_bytes(b"x")
    (stopped / "summary.json").write_text(json.dumps({"stopped": "interrupted"}))
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"stopped": "early_stopping"}))
    assert [job_state(d) for d in (new, failed, killed, stopped, done)] == \
        ["new", "failed", "interrupted", "interrupted", "finished"]
    (tmp_path / "partial").mkdir()  # killed before its first checkpoint: starts again
    (tmp_path / "partial" / "run.json").write_text("{}")
    assert job_state(tmp_path / "partial") == "failed"


@pytest.mark.slow
def test_a_killed_sweep_resumes_in_place(tmp_path, capsys, monkeypatch):
    """4 jobs; SIGTERM in the middle of the third; resumed: the first two untouched, the third continued exactly,
    the fourth run, the numbers and directories as before."""
    monkeypatch.chdir(tmp_path)
    sweep, log = tmp_path / "sweep", tmp_path / "sweep.log"
    args = ["-m", *SWEEP, "seed=0,1,2,3", f"hydra.sweep.dir={sweep}"]
    proc = start_cli(args, tmp_path, log)
    wait_for(sweep / "2" / "train.log", "epoch 2 train 4/", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    text = log.read_text()
    assert f"the sweep stopped: continue it with trainlab train -m resume={sweep}" in text
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2"]  # job 3 never started
    assert json.loads((sweep / "2" / "summary.json").read_text())["stopped"] == "interrupted"
    before = {job: record_of(sweep / job) for job in ("0", "1")}

    code, _, err = run(capsys, "train", "-m", f"resume={sweep}", "seed=0,1")  # not the sweep that was started
    assert_one_line(code, "", err, "the overrides differ from the sweep", "seed=0,1")

    code, _, err = run(capsys, "train", "-m", f"resume={sweep}")
    assert code == 0, err
    assert "job 0" in err and "finished before: kept as it is" in err and "job 2" in err and "continues from" in err
    for job in ("0", "1"):
        assert record_of(sweep / job) == before[job]  # not run again: every file byte-identical
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]
    for job in ("2", "3"):
        assert json.loads((sweep / job / "summary.json").read_text())["stopped"] == "completed"
    # The interrupted job equals the same settings run straight through (with the same thread count: SWEEP's).
    code, _, err = run(capsys, "train", *SWEEP, "seed=2", f"hydra.run.dir={tmp_path / 'straight'}")
    assert code == 0, err
    pd.testing.assert_frame_equal(rows(tmp_path / "straight"), rows(sweep / "2"))
    expected, got = weights(tmp_path / "straight"), weights(sweep / "2")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    # The same command line works too (in any order), and a finished sweep has nothing left to run.
    code, _, err = run(capsys, "train", "-m", f"resume={sweep}", "seed=0,1,2,3", *SWEEP)
    assert code == 0 and err.count("finished before") == 4, err


@pytest.fixture(scope="module")
def seeds_sweep(tmp_path_factory):
    """Three seeds of three learning rates (lr=-1 is refused by each of its jobs), reported with a pivot: the sweep
    folder, the report's console output, and each finished job's final/best val/acc1 and final val/loss read here
    with pandas, the independent computation."""
    from helpers import run_here

    sweep = tmp_path_factory.mktemp("seeds") / "sweep"
    code, _, err = run_here("train", "-m", *FAST, "dataset.train_size=96", "trainer.epochs=2", "seed=0,1,2",
                            "optimizer.lr=0.05,0.2,-1.0", f"hydra.sweep.dir={sweep}")
    assert code == 1 and "3 job(s) of the sweep failed" in err
    code, out, err = run_here("report", str(sweep), "--rows", "optimizer.lr", "--cols", "seed")
    assert code == 0, err
    jobs = []
    for job in sorted(sweep.iterdir()):
        if (job / "metrics.csv").is_file():
            overrides = dict(o.split("=", 1) for o in yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
            frame = pd.read_csv(job / "metrics.csv")
            jobs.append({"optimizer.lr": overrides["optimizer.lr"], "seed": overrides["seed"],
                         "final": frame["val/acc1"].iloc[-1], "best": frame["val/acc1"].max(),
                         "loss": frame["val/loss"].iloc[-1]})
    return sweep, out, pd.DataFrame(jobs)


def _expected(jobs: pd.DataFrame) -> pd.DataFrame:
    return jobs.drop(columns="seed").groupby("optimizer.lr").agg(["mean", "std", "count"])


@pytest.mark.slow
def test_seeds_are_summarised_as_mean_and_std(seeds_sweep):
    sweep, _, jobs = seeds_sweep
    expected = _expected(jobs)
    seeds = pd.read_csv(sweep / "seeds.csv", dtype={"optimizer.lr": str}).set_index("optimizer.lr")
    for lr in ("0.05", "0.2"):
        assert seeds.loc[lr, "n"] == expected.loc[lr, ("final", "count")] == 3
        for ours, theirs in (("final val/acc1", "final"), ("best val/acc1", "best"), ("final val/loss", "loss")):
            assert seeds.loc[lr, f"{ours} mean"] == pytest.approx(expected.loc[lr, (theirs, "mean")], abs=1e-12)
            assert seeds.loc[lr, f"{ours} std"] == pytest.approx(expected.loc[lr, (theirs, "std")], abs=1e-12)
    assert seeds.loc["-1.0", "failed"] == 3 and seeds.loc["-1.0", "n"] == 0 and seeds.loc["0.05", "failed"] == 0


@pytest.mark.slow
def test_the_seed_tables_are_exported_for_a_paper(seeds_sweep):
    sweep, _, jobs = seeds_sweep
    expected = _expected(jobs)
    mean, std = expected.loc["0.05", ("final", "mean")], expected.loc["0.05", ("final", "std")]
    assert f"{mean:.4f} ± {std:.4f}" in (sweep / "seeds.md").read_text()
    assert r"$\pm$" in (sweep / "seeds.tex").read_text() and r"\begin{tabular}" in (sweep / "seeds.tex").read_text()
    pivot = pd.read_csv(sweep / "pivot.csv", dtype=str)
    assert list(pivot.columns) == ["optimizer.lr \\ seed", "0", "1", "2"] and len(pivot) == 3
    report = (sweep / "report.md").read_text()
    assert "## Seeds: mean ± std" in report and "the band ± one standard deviation" in report


@pytest.mark.slow
def test_a_pivot_says_whether_each_value_beats_the_first(seeds_sweep):
    """Each lr against the first that ran (0.05; -1.0 failed), paired over the seeds: scipy's numbers."""
    sweep, out, jobs = seeds_sweep
    evidence = pd.read_csv(sweep / "evidence.csv")
    assert list(evidence["B"]) == ["optimizer.lr=0.2"] and list(evidence["A"]) == ["optimizer.lr=0.05"]
    final = {lr: jobs[jobs["optimizer.lr"] == lr].sort_values("seed")["final"].tolist() for lr in ("0.05", "0.2")}
    differences = [b - a for a, b in zip(final["0.05"], final["0.2"])]
    assert evidence["difference"].iloc[0] == pytest.approx(sum(differences) / 3)
    if pd.Series(differences).std() > 0:
        assert evidence["p"].iloc[0] == pytest.approx(stats.ttest_rel(final["0.2"], final["0.05"]).pvalue)
    assert f"optimizer.lr=0.2 vs optimizer.lr=0.05: {evidence['verdict'].iloc[0]}" in out


@pytest.mark.slow
def test_runs_seeds_gives_the_same_groups_from_any_folder(seeds_sweep, capsys):
    sweep, _, jobs = seeds_sweep
    expected = _expected(jobs)
    code, out, err = run(capsys, "runs", str(sweep), "--seeds", "--csv")
    assert code == 0, err
    listed = pd.read_csv(io.StringIO(out), dtype={"optimizer.lr": str}).set_index("optimizer.lr")
    for lr in ("0.05", "0.2"):
        assert listed.loc[lr, "n"] == 3
        assert listed.loc[lr, "final val/acc1 mean"] == pytest.approx(expected.loc[lr, ("final", "mean")], abs=1e-12)
        assert listed.loc[lr, "final val/acc1 std"] == pytest.approx(expected.loc[lr, ("final", "std")], abs=1e-12)
    assert listed.loc["-1.0", "failed"] == 3


@pytest.mark.slow
def test_a_pivot_of_a_key_the_jobs_share_is_one_line(seeds_sweep):
    sweep, _, _ = seeds_sweep
    code, out, err = shell("report", str(sweep), "--rows", "optimizer.momentum", "--cols", "seed")
    assert_one_line(code, out, err, "'optimizer.momentum' is not an override that differs", "optimizer.lr, seed")


@pytest.mark.slow
def test_an_interrupted_optuna_study_continues_from_its_storage(tmp_path, capsys, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    monkeypatch.chdir(tmp_path)
    sweep, log = tmp_path / "optuna", tmp_path / "optuna.log"
    # Hydra's own Optuna sweeper (trainlab's preset uses trainlab's search): its SQLite study continues too.
    args = ["-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "hydra.sweeper.n_jobs=1",
            "hydra.sweeper.study_name=trainlab",
            f"hydra.sweeper.storage=sqlite:///{sweep}/optuna.db", "hydra.sweeper.sampler.seed=0",
            "optimizer.lr=tag(log, interval(0.001, 0.5))", "optimizer.weight_decay=tag(log, interval(0.00001, 0.01))",
            *FAST, *LONGER_STEPS, "dataset.train_size=400", "trainer.log_every_n_steps=2",
            "trainer.epochs=2", "hydra.sweeper.n_trials=3",
            f"hydra.sweep.dir={sweep}"]
    proc = start_cli(args, tmp_path, log)
    wait_for(sweep / "1" / "train.log", "epoch 1 train 4/", proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, log.read_text()
    assert (sweep / "optuna.db").is_file()
    job0 = record_of(sweep / "0")
    killed = yaml.safe_load((sweep / "1" / ".hydra" / "overrides.yaml").read_text())

    code, _, err = run(capsys, "train", f"resume={sweep}")
    assert code == 0, err
    assert record_of(sweep / "0") == job0  # trial 0 finished: not run again
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()) == ["0", "1", "2", "3"]
    retried = yaml.safe_load((sweep / "2" / ".hydra" / "overrides.yaml").read_text())
    assert set(killed) <= set(retried)  # the killed trial's parameters, tried again
    with sqlite3.connect(sweep / "optuna.db") as db:  # the study itself: 3 trials done, the killed one failed
        states = [s for (s,) in db.execute("SELECT state FROM trials ORDER BY number")]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    line = next(ln for ln in err.splitlines() if ln.startswith("trainlab: best trial: job "))  # which folder
    job = line.split("best trial: job ", 1)[1].split()[0]
    assert f"in {sweep / job}, value {best['best_value']}" in line
    assert json.loads((sweep / job / "summary.json").read_text())["best"]["val/acc1"] == best["best_value"]


@pytest.mark.slow
def test_submitit_requeue_signal_saves_and_the_requeued_job_continues(tmp_path, capsys, monkeypatch):
    """Job 0 is sent SIGUSR2 and requeued; job 1 (lr=-1) fails in its own process, and the launching command
    still reports it and exits 1, as the basic launcher does."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.chdir(tmp_path)
    sweep, job = tmp_path / "slurm", tmp_path / "slurm" / "0"
    # What SLURM (or submitit_local at timeout_min - signal_delay_s) sends the job's process before its time is up.
    # The launching command runs in this process (it only waits for submitit's job processes).
    sent = signal_when(job / "train.log", "epoch 2 train 4/", job / ".trainlab.lock", signal.SIGUSR2)
    code, out, err = run(capsys, "train", "-m", *SWEEP, "hydra/launcher=submitit_local", "seed=3",
                         "optimizer.lr=0.05,-1.0", f"hydra.sweep.dir={sweep}")
    assert sent.is_set() and code == 1, out + err
    lines = err.splitlines()
    assert f"trainlab: error: job 1 ({sweep / '1'}): cannot build the optimizer: Invalid learning rate: -1.0 " \
           "(check the optimizer.* keys)" in lines
    assert lines[-1] == f"trainlab: error: 1 job(s) of the sweep failed: {sweep / '1'}"
    text = (job / "train.log").read_text()
    assert "SIGUSR2 received" in text and "submitit requeues this job" in text
    assert "resuming at epoch 2, batch" in text
    assert json.loads((job / "summary.json").read_text())["stopped"] == "completed"
    assert not (job / "checkpoints" / "interrupted.ckpt").exists()
    code, _, err = run(capsys, "train", *SWEEP, "seed=3", "optimizer.lr=0.05", f"hydra.run.dir={tmp_path / 'straight'}")
    assert code == 0, err
    pd.testing.assert_frame_equal(rows(tmp_path / "straight"), rows(job))


@pytest.mark.slow
def test_a_ddp_job_under_submitit_is_requeued_and_continues_exactly(tmp_path, capsys, monkeypatch):
    """device.count=2 under submitit: the requeue signal reaches the job's process; both training processes save
    interrupted.ckpt, submitit requeues the job, and it continues from there to the end."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.chdir(tmp_path)
    ddp = ["device=cpu", "device.count=2", "model=mlp"]
    sweep, job = tmp_path / "slurm", tmp_path / "slurm" / "0"
    sent = signal_when(job / "train.log", "epoch 2 train 4/", job / ".trainlab.lock", signal.SIGUSR2)
    code, out, err = run(capsys, "train", "-m", *SWEEP, *ddp, "hydra/launcher=submitit_local", "seed=3",
                         f"hydra.sweep.dir={sweep}")
    assert sent.is_set() and code == 0, out + err
    text = (job / "train.log").read_text()
    assert "SIGUSR2: stopping the training processes" in text and "submitit requeues this job" in text
    assert "resuming at epoch 2, batch" in text
    assert json.loads((job / "summary.json").read_text())["stopped"] == "completed"
    # Mid-epoch resumes of two processes equal a run never stopped: test_distributed.py checks those numbers.
    assert list(rows(job)["epoch"]) == [1, 2] and not (job / "checkpoints" / "interrupted.ckpt").exists()


def test_a_sweep_dir_of_the_users_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = hashes(mine)
    code, out, err = shell("train", "-m", *FAST, "seed=0,1", f"hydra.sweep.dir={mine}")
    assert_one_line(code, out, err, "is not empty and holds no trainlab sweep")
    assert hashes(mine) == before and [p.name for p in mine.iterdir()] == ["notes.txt"]
