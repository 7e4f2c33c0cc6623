"""Reports and diagnostics from real tiny runs, single and multirun, and the Optuna preset."""

from __future__ import annotations

import base64
import re

import pandas as pd
import pytest

from trainlab.commands.report import report
from trainlab.core.columns import COLUMNS
from trainlab.engine.fit import train

from helpers import FAST, compose, run


@pytest.mark.slow
def test_single_run_report_is_self_contained_and_names_every_metric(tmp_path):
    train(compose(FAST + ["trainer.epochs=3", "optimizer.lr=0.001"]), tmp_path)  # slow enough to confuse classes
    md, page = report(tmp_path)
    text = page.read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    pngs = list((tmp_path / "report_files").glob("*.png"))
    assert len(images) == len(pngs) >= 8  # every curve and the confusion matrix, embedded
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert "http://" not in text and "https://" not in text and "<script" not in text  # opens offline
    for name in COLUMNS:
        assert name in text, name
    for section in ("Final and best metrics", "Curves", "Confusion matrix", "Most confused pairs",
                    "Per-class accuracy", "Analysis", "Configuration"):
        assert section in text and section in md.read_text()
    assert "report_files/loss.png" in md.read_text() and "| true class | predicted as |" in md.read_text()
    assert (tmp_path / "report_files" / "confusion.png").stat().st_size > 1000


@pytest.mark.slow
def test_diagnose_cli_and_end_of_training_findings(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, _, err = run(capsys, "train", *FAST, "trainer.epochs=4", "optimizer.lr=1e-9", "scheduler=none",
                       "dataset.train_size=128", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    log = (run_dir / "train.log").read_text()  # lr far too low: nothing moves
    # (a plateau, or chance level with a loss that barely moved: either names the learning rate)
    finding = re.search(r"diagnosis: (\[warning\] [\w -]+) \(epochs .*learning rate may be far too low", log)
    assert finding, log[-2000:]
    code, out, _ = run(capsys, "diagnose", str(run_dir))
    assert code == 0 and finding.group(1) in out and "learning rate may be far too low" in out
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "diagnose", str(tmp_path / "empty"))
    assert code == 2 and "has no metrics.csv" in err


@pytest.mark.slow
def test_multirun_report_compares_the_jobs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    code, _, err = run(capsys, "train", "-m", *FAST, "trainer.epochs=2", "optimizer=sgd,adam",
                       f"hydra.sweep.dir={sweep}")
    assert code == 0, err
    code, _, err = run(capsys, "report", str(sweep))
    assert code == 0, err
    text = (sweep / "report.html").read_text()
    assert "optimizer=sgd" in text and "optimizer=adam" in text and text.count("data:image/png;base64") == 2
    assert "| 0 | optimizer=sgd" in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_optuna_preset_runs_trials_and_survives_a_failing_one(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "optuna"
    # Seed 1 samples lr=-1.0 (refused at start-up) for one of the two trials, and 0.05 for the other.
    code, _, err = run(capsys, "train", "+hparams_search=optuna", *FAST, "dataset.train_size=64", "trainer.epochs=1",
                       "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.seed=1", "optimizer.lr=choice(-1.0,0.05)",
                       f"hydra.sweep.dir={sweep}")
    assert code == 1 and "1 job(s) of the sweep failed" in err
    assert len(list(sweep.glob("*/error.txt"))) == 1 and len(list(sweep.glob("*/metrics.csv"))) == 1
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()
    assert run(capsys, "report", str(sweep))[0] == 0
    text = (sweep / "report.html").read_text()
    assert "Hyper-parameter search" in text and "1 complete, 1 failed" in text
    assert "failed: cannot build the optimizer: Invalid learning rate: -1.0" in text




def test_per_epoch_axes_have_integer_ticks(tmp_path, monkeypatch):
    """A two-epoch run's curves are ticked at epochs, not at 1.0, 1.2, ..., 2.0."""
    import matplotlib.pyplot as plt

    from trainlab.analysis import plots

    ticks = []
    real_savefig = plt.Figure.savefig

    def savefig(fig, *args, **kwargs):
        ticks.extend(t for ax in fig.axes for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1])
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", savefig)
    history = pd.DataFrame({"epoch": [1, 2], "train/loss": [1.0, 0.5], "val/loss": [1.1, 0.7],
                            "train/acc1": [0.5, 0.7], "val/acc1": [0.4, 0.6]})
    assert plots.plot_history(history, tmp_path)
    assert ticks and all(float(t).is_integer() for t in ticks), ticks
