"""`hydra/sweeper=search`: the search space read as Hydra's Optuna sweeper reads it, pruning checked against a median
rule written out here, trials that start as soon as a device is free, a kill -9 continued exactly, two processes on
one study, what the study and the report leave, and bad settings as one line before anything runs."""

from __future__ import annotations

import json
import signal
import statistics
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import FAST, LONGER_STEPS, assert_one_line, hashes, shell, start_cli, wait_for

optuna = pytest.importorskip("optuna")

SEARCH = ["hydra/sweeper=search", "hydra/launcher=parallel", "hydra.sweeper.sampler.seed=0"]


def search_csv(sweep: Path) -> pd.DataFrame:
    return pd.read_csv(sweep / "search.csv", parse_dates=["started", "ended"]).sort_values("number")


def load_study(sweep: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return optuna.load_study(study_name="trainlab", storage=JournalStorage(JournalFileBackend(str(sweep /
                                                                                               "optuna.journal"))))


@pytest.mark.parametrize("space", [
    "interval(0.1, 1.0)", "tag(log, interval(0.001, 0.5))", "interval(1, 10)", "tag(log, interval(1, 64))",
    "range(1, 5)", "range(1, 10, 3)", "range(0.1, 0.5, 0.1)", "choice(32, 64, 128)", "choice(cosine, step, none)",
    "shuffle(range(1, 4))", "7"])
def test_the_search_space_reads_as_hydras_optuna_sweeper_reads_it(space):
    hydras = pytest.importorskip("hydra_plugins.hydra_optuna_sweeper._impl")
    from trainlab.cli.search import search_space

    theirs_space, theirs_fixed = hydras.create_params_from_overrides([f"key={space}"])
    mine_space, mine_fixed = search_space({"key": space}, [])
    assert mine_fixed == theirs_fixed
    assert mine_space.keys() == theirs_space.keys()
    for key, theirs in theirs_space.items():
        mine = mine_space[key]
        fields = ("low", "high", "log", "step", "choices")
        order = sorted if space.startswith("shuffle") else tuple  # shuffle(...): in a random order, in both
        assert read(mine, fields, order) == read(theirs, fields, order)
        kinds = (optuna.distributions.FloatDistribution, optuna.distributions.IntDistribution,
                 optuna.distributions.CategoricalDistribution)
        assert [isinstance(mine, k) for k in kinds] == [isinstance(theirs, k) for k in kinds]


def read(distribution, fields, order) -> dict:
    return {f: order(getattr(distribution, f)) if f == "choices" else getattr(distribution, f, None) for f in fields
            if f != "choices" or hasattr(distribution, f)}


def test_a_fixed_value_on_the_command_line_wins_over_the_files_search_space():
    from trainlab.cli.search import search_space

    space, fixed = search_space({"optimizer.lr": "interval(0.01, 0.1)", "seed": "choice(0, 1)"}, ["optimizer.lr=0.05"])
    assert list(space) == ["seed"] and fixed == {"optimizer.lr": "0.05"}


def test_a_bad_pruner_is_one_line_before_anything_runs(tmp_path):
    code, out, err = shell("train", "-m", *FAST, *SEARCH, "optimizer.lr=choice(0.01,0.1)", "hydra.sweeper.pruner=mean",
                           "hydra.sweep.dir=s", cwd=tmp_path)
    assert_one_line(code, out, err, "hydra.sweeper.pruner=mean is not a pruner", "median, percentile")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("bad, says", [
    (["hydra.sweeper.pruner=percentile"], "do not suit the percentile pruner"),
    (["hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials must be >= 1"),
    (["hydra.sweeper.direction=up"], "hydra.sweeper.direction must be maximize, minimize or null"),
    (["hydra/launcher=basic"], "hydra/sweeper=search runs its trials through hydra/launcher=parallel"),
    (["hydra.sweeper.params={optimizer.lr: 'interval(0.01,0.1)'}"],
     "cannot set hydra.sweeper.params: Key 'optimizer.lr' is not in struct; to add keys write +hydra.sweeper.params="),
    (["hydra.launcher.jobz=2"], "cannot set hydra.launcher.jobz: Key 'jobz' not in 'ParallelLauncherConf'"),
    (["+hparams_search=optuna", "hydra.sweeper.params.scheduler='interval(0.1'"],
     "cannot read 'scheduler=interval(0.1' of the search space"),
])
def test_bad_search_settings_are_one_line_before_anything_runs(tmp_path, bad, says):
    code, out, err = shell("train", "-m", *FAST, *SEARCH, "optimizer.lr=choice(0.01,0.1)", *bad, "hydra.sweep.dir=s",
                           cwd=tmp_path)
    assert_one_line(code, out, err, says)
    assert list(tmp_path.iterdir()) == []


def expected_pruning(table: pd.DataFrame, curves: dict[int, list[float]], startup: int) -> dict[int, int | None]:
    """Optuna's median rule, written out: trials one after another; at epoch k a trial stops when at least `startup`
    trials have completed and its best value so far is below the median of theirs at epoch k."""
    completed, expected = [], {}
    for number in table["number"]:
        values, expected[number] = curves[number], None
        for k in range(1, len(values) + 1):
            theirs = [curves[c][k - 1] for c in completed if len(curves[c]) >= k]
            if len(completed) >= startup and theirs and max(values[:k]) < statistics.median(theirs):
                expected[number] = k
                break
        if expected[number] is None:
            completed.append(number)
    return expected


@pytest.mark.slow
def test_the_median_pruner_stops_a_trial_worse_than_the_median_and_keeps_its_record(tmp_path):
    sweep = tmp_path / "s"
    code, out, err = shell("train", *FAST, "+hparams_search=optuna", "trainer.epochs=3", "hydra.sweeper.n_trials=6",
                         "hydra.sweeper.n_jobs=1", "+hydra.sweeper.pruner_args={n_startup_trials: 1}",
                         f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, err
    table = search_csv(sweep)
    curves = {n: list(pd.read_csv(sweep / str(n) / "metrics.csv")["val/acc1"]) for n in table["number"]}
    expected = expected_pruning(table, curves, startup=1)
    for _, row in table.iterrows():
        summary = json.loads((sweep / str(row["number"]) / "summary.json").read_text())
        if expected[row["number"]] is None:
            assert row["state"] == "complete" and summary["stopped"] == "completed" and row["epochs"] == 3
            assert row["value"] == pytest.approx(max(curves[row["number"]]))
        else:
            assert row["state"] == "pruned" and summary["stopped"] == "pruned"
            assert row["epochs"] == expected[row["number"]] == len(curves[row["number"]])
            assert (sweep / str(row["number"]) / "checkpoints" / "last.ckpt").is_file()
    assert set(table["state"]) == {"complete", "pruned"}  # both happened: the rule above was put to the test
    record = json.loads((sweep / "sweep.json").read_text())["search"]
    assert record["trials"] == {str(n): state for n, state in zip(table["number"], table["state"])}
    # The study is an ordinary Optuna study: its trials, states and each epoch's value read back by Optuna itself.
    study = load_study(sweep)
    assert [t.state.name.lower().replace("fail", "failed") for t in study.trials] == list(table["state"])
    for trial in study.trials:
        assert [trial.intermediate_values[k] for k in sorted(trial.intermediate_values)] == \
            pytest.approx(curves[trial.number])
    assert f"pruned at epoch {expected[next(n for n, k in expected.items() if k)]}" in out  # the console's line
    runs = shell("runs", str(sweep), cwd=tmp_path)
    assert runs[0] == 0 and "pruned" in runs[1]
    code, out, err = shell("report", str(sweep), cwd=tmp_path)
    assert code == 0, err
    report = (sweep / "report.md").read_text()
    assert "## Hyper-parameter search" in report and "Parameter importances" in report
    assert (sweep / "report_files" / "search_curves.png").is_file()
    assert (sweep / "report_files" / "search_parameters.png").is_file()
    (sweep / "search.csv").write_text('number,state\n"unterminated')  # damaged: the rest is still reported
    code, out, err = shell("report", str(sweep), cwd=tmp_path)
    assert code == 0 and "Traceback" not in err, err
    assert f"{sweep / 'search.csv'} could not be read" in err
    assert "search.csv could not be read" in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_a_freed_device_takes_the_next_trial_at_once(tmp_path):
    """Two at once, trials of 1 or 5 epochs: a trial starts when a short one ends, while a long one still runs (in
    batches it would wait for the long one)."""
    sweep = tmp_path / "s"
    code, out, err = shell("train", "-m", *FAST, *LONGER_STEPS, *SEARCH, "trainer.epochs=choice(1,5)",
                           "+hydra.sweeper.params={optimizer.lr: 'interval(0.01,0.05)'}",  # the space in params too
                           "hydra.sweeper.n_trials=5", "hydra.sweeper.n_jobs=2",
                         "hydra.sweeper.pruner=none", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, err
    table = search_csv(sweep)
    assert list(table["state"]) == ["complete"] * 5 and set(table["trainer.epochs"]) == {1, 5}
    rows = list(table.itertuples())
    overlapping = [(a.number, b.number, c.number) for a in rows for b in rows for c in rows
                   if len({a.number, b.number, c.number}) == 3
                   and a.ended <= c.started < b.ended and b.started < c.started]
    assert overlapping, table[["number", "trainer.epochs", "started", "ended"]].to_string()
    assert "trials 2 at once (hydra.sweeper.n_jobs)" in out


def wait_until(condition, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_search_killed_with_kill_9_continues_its_trials_exactly(tmp_path):
    sweep = tmp_path / "s"
    args = [*FAST, *LONGER_STEPS, "dataset.train_size=1600", "trainer.log_every_n_steps=2", *SEARCH,
            "optimizer.lr=interval(0.01,0.05)",
            "trainer.epochs=2", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner=none",
            f"hydra.sweep.dir={sweep}"]
    proc = start_cli(["-m", *args], tmp_path, tmp_path / "search.log")
    for n in ("2", "3"):  # both training (trials 0 and 1 have ended): each has a step to save at
        wait_for(sweep / n / "train.log", "epoch 1 train", proc, timeout=240)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Its jobs get SIGTERM as it dies: each saves a checkpoint and lets go of its folder.
    wait_until(lambda: all((sweep / n / "summary.json").is_file() for n in ("2", "3")))
    finished = hashes(sweep / "0", sweep / "1")
    assert json.loads((sweep / "2" / "summary.json").read_text())["stopped"] == "interrupted"

    code, out, err = shell("train", "-m", f"resume={sweep}", cwd=tmp_path)
    assert code == 0, err
    assert hashes(sweep / "0", sweep / "1") == finished  # finished trials: not run again, not touched
    table = search_csv(sweep)
    assert list(table["number"]) == [0, 1, 2, 3] and list(table["state"]) == ["complete"] * 4
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == ["0", "1", "2", "3"]
    for n in ("2", "3"):  # continued from where it stopped: each epoch once, from its checkpoint
        assert list(pd.read_csv(sweep / n / "metrics.csv")["epoch"]) == [1, 2]
    assert "resuming at epoch" in (sweep / "2" / "train.log").read_text()
    assert "trial 2: its process is gone; this one continues it" in out
    assert len(load_study(sweep).trials) == 4


@pytest.mark.slow
def test_two_processes_on_one_study_make_n_trials_in_all(tmp_path):
    sweep = tmp_path / "s"
    first = start_cli(["-m", *FAST, *SEARCH, "optimizer.lr=interval(0.01,0.05)", "hydra.sweeper.n_trials=6",
                       "hydra.sweeper.n_jobs=1", "hydra.sweeper.pruner=none", f"hydra.sweep.dir={sweep}"],
                      tmp_path, tmp_path / "first.log")
    wait_for(sweep / "0" / "train.log", "epoch 1", first)
    second = start_cli(["-m", f"resume={sweep}"], tmp_path, tmp_path / "second.log")  # joins the same study
    assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()
    assert second.wait(timeout=600) == 0, (tmp_path / "second.log").read_text()
    study = load_study(sweep)
    assert sorted(t.number for t in study.trials) == list(range(6))
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 2  # both processes ran trials
    for t in study.trials:  # each trial ran once, in its own folder
        assert len(pd.read_csv(sweep / str(t.number) / "metrics.csv")) == 2
    assert sorted(p.name for p in sweep.iterdir() if p.name.isdigit()) == [str(n) for n in range(6)]
