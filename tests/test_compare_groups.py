"""`trainlab compare` of two recipes over seeds, through the CLI: the numbers it prints and writes are scipy's
computed here from each job's metrics.csv; a bad split or metric is one line."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from scipy import stats

from helpers import FAST, assert_one_line, run, shell


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Three seeds of two learning rates, in one sweep folder."""
    from helpers import run_here

    folder = tmp_path_factory.mktemp("sweeps") / "lr"
    code, _, err = run_here("train", "-m", *FAST, "seed=0,1,2", "optimizer.lr=0.01,0.2", f"hydra.sweep.dir={folder}")
    assert code == 0, err
    return folder


def _best(sweep, lr: str) -> dict[str, float]:
    """Each job's best val/acc1 read here, by seed."""
    values = {}
    for job in sorted(p for p in sweep.iterdir() if p.name.isdigit()):
        overrides = dict(o.split("=", 1) for o in
                         (job / ".hydra" / "overrides.yaml").read_text().replace("- ", "").split())
        if overrides["optimizer.lr"] == lr:
            values[overrides["seed"]] = float(pd.read_csv(job / "metrics.csv")["val/acc1"].max())
    return values


def test_a_sweep_split_by_an_override_is_compared_paired_over_its_seeds(sweep, tmp_path, capsys):
    code, out, err = run(capsys, "compare", str(sweep), "by=optimizer.lr", f"out={tmp_path / 'cmp'}")
    assert code == 0, err
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    a, b = _best(sweep, "0.01"), _best(sweep, "0.2")
    assert result["a"]["label"] == "optimizer.lr=0.01" and [r["value"] for r in result["a"]["runs"]] == list(a.values())
    assert result["difference"] == pytest.approx(sum(b.values()) / 3 - sum(a.values()) / 3)
    assert result["a"]["std"] == pytest.approx(pd.Series(list(a.values())).std())
    diffs = [b[s] - a[s] for s in a]
    if pd.Series(diffs).std() > 0:  # the same seeds in both: the paired test
        ref = stats.ttest_rel([b[s] for s in a], [a[s] for s in a])
        assert result["test"] == "paired over 3 seeds"
        assert result["paired"]["p_value"] == pytest.approx(ref.pvalue)
        assert result["paired"]["ci_low"] == pytest.approx(ref.confidence_interval().low)
    assert "verdict: " in out and result["verdict"] in out
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert len(pd.read_csv(tmp_path / "cmp" / "runs.csv")) == 6


def test_two_sweep_folders_are_compared_with_welch(tmp_path, capsys):
    for name, lr in (("a", "0.01"), ("b", "0.2")):
        code, _, err = run(capsys, "train", "-m", *FAST, "seed=0,1", f"optimizer.lr={lr}",
                           f"hydra.sweep.dir={tmp_path / name}")
        assert code == 0, err
    code, out, err = run(capsys, "compare", str(tmp_path / "a"), str(tmp_path / "b"), "metric=final val/loss",
                         f"out={tmp_path / 'cmp'}")
    assert code == 0, err
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    a = [float(pd.read_csv(tmp_path / "a" / j / "metrics.csv")["val/loss"].iloc[-1]) for j in ("0", "1")]
    b = [float(pd.read_csv(tmp_path / "b" / j / "metrics.csv")["val/loss"].iloc[-1]) for j in ("0", "1")]
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert result["metric"] == "final val/loss" and result["higher_is_better"] is False
    assert result["welch"]["p_value"] == pytest.approx(ref.pvalue)
    assert result["welch"]["ci_high"] == pytest.approx(ref.confidence_interval().high)


@pytest.mark.slow
@pytest.mark.parametrize("args,words", [
    (["by=seed"], "splits"),
    (["by=optimizer.lr", "a=0.5", "b=0.2"], "optimizer.lr=0.5"),
    (["by=optimizer.lr", "metric=best val/nothing"], "no finished run with best val/nothing"),
    (["by=optimizer.lr", "colour=red"], "compare takes two sweep folders"),
])
def test_bad_group_comparisons_are_one_line(sweep, tmp_path, args, words):
    assert_one_line(*shell("compare", str(sweep), *args, f"out={tmp_path / 'cmp'}"), words)
    assert not (tmp_path / "cmp").exists()
