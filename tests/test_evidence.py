"""The statistics behind `trainlab compare`, each checked against scipy.stats, statsmodels or a computation written
here: McNemar's exact test, Welch's and the paired t-test with their intervals, and the seeds needed at 80% power;
small, identical and spread-less groups give words, never NaN."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from trainlab.analysis.evidence import mcnemar, seeds_needed, two_groups
from trainlab.analysis.groups import metric_value


def _exact_mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar by hand: twice the binomial tail of the smaller count at 1/2, capped at 1."""
    n, k = b + c, min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("only_a,only_b,images", [(12, 31, 269), (5, 5, 100), (0, 7, 50), (40, 22, 1000)])
def test_mcnemar_matches_the_exact_binomial_and_the_paired_interval(only_a, only_b, images):
    got = mcnemar(only_a, only_b, images)
    assert got["p_value"] == pytest.approx(_exact_mcnemar(only_a, only_b), rel=1e-9)
    d = (only_b - only_a) / images
    # The paired difference of two proportions, one row per image: var of the per-image difference / n.
    per_image = np.array([1.0] * only_b + [-1.0] * only_a + [0.0] * (images - only_a - only_b))
    se = per_image.std(ddof=0) / math.sqrt(images)
    assert got["difference"] == pytest.approx(d)
    assert got["ci_low"] == pytest.approx(d - 1.959963984540054 * se)
    assert got["ci_high"] == pytest.approx(d + 1.959963984540054 * se)


def test_mcnemar_agrees_with_statsmodels():
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    table = [[200, 12], [31, 26]]  # both right, only A right / only B right, both wrong
    assert mcnemar(12, 31, 269)["p_value"] == pytest.approx(sm_mcnemar(table, exact=True).pvalue, rel=1e-9)


def test_mcnemar_verdicts_read_as_a_sentence():
    assert mcnemar(2, 30, 269)["verdict"].startswith("B is better: +10.4 points [")
    assert "p < 0.001, 269 images" in mcnemar(2, 30, 269)["verdict"]
    assert mcnemar(30, 2, 269)["verdict"].startswith("A is better: -10.4 points")
    assert mcnemar(10, 12, 269)["verdict"].startswith("no evidence of a difference at this size: +0.7 points")
    same = mcnemar(0, 0, 100)
    assert same["p_value"] == 1.0 and same["verdict"] == "no difference: A and B are right on the same 100 images"


def test_welch_matches_scipy():
    a = {0: 0.61, 1: 0.63, 2: 0.60, 3: 0.64}
    b = {10: 0.66, 11: 0.65, 12: 0.69}  # other seeds: not paired
    got = two_groups(a, b, points=True)
    ref = stats.ttest_ind(list(b.values()), list(a.values()), equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert got["welch"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert got["welch"]["ci_low"] == pytest.approx(ci.low) and got["welch"]["ci_high"] == pytest.approx(ci.high)
    assert got["welch"]["df"] == pytest.approx(ref.df)
    assert got["paired"] is None and got["test"] == "Welch, 4 vs 3 seeds"
    assert got["a"]["std"] == pytest.approx(np.std(list(a.values()), ddof=1))
    assert got["verdict"].startswith("B is better: +4.7 points [")


def test_the_same_seeds_are_paired_as_scipy_pairs_them():
    a = {0: 0.610, 1: 0.640, 2: 0.600, 3: 0.655, 4: 0.620}
    b = {0: 0.616, 1: 0.649, 2: 0.603, 3: 0.662, 4: 0.628}  # a little better on every seed
    got = two_groups(a, b, points=True)
    ref = stats.ttest_rel([b[s] for s in a], [a[s] for s in a])
    ci = ref.confidence_interval(0.95)
    assert got["paired"]["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert got["paired"]["ci_low"] == pytest.approx(ci.low) and got["paired"]["ci_high"] == pytest.approx(ci.high)
    assert got["test"] == "paired over 5 seeds" and got["verdict"].startswith("B is better")
    assert got["welch"]["p_value"] > 0.05  # unpaired, the seed-to-seed spread hides it


@pytest.mark.parametrize("diff,sd", [(0.01, 0.01), (0.004, 0.01), (0.02, 0.005), (1.0, 3.0)])
def test_seeds_needed_matches_statsmodels_power(diff, sd):
    from statsmodels.stats.power import TTestIndPower

    n = TTestIndPower().solve_power(effect_size=diff / sd, alpha=0.05, power=0.8, ratio=1.0)
    assert seeds_needed(diff, sd) == max(2, math.ceil(n - 1e-9))


def test_lower_is_better_flips_the_winner():
    a, b = {0: 1.20, 1: 1.25, 2: 1.22}, {0: 1.00, 1: 1.04, 2: 1.01}
    assert two_groups(a, b, higher_is_better=False)["verdict"].startswith("B is better: -0.2")


@pytest.mark.parametrize("a,b,words", [
    ({0: 0.6}, {0: 0.7}, "cannot tell yet: +10.0 points from 1 vs 1 run(s)"),
    ({0: 0.6, 1: 0.62}, {0: 0.7}, "cannot tell yet"),
    ({0: 0.6, 1: 0.6}, {0: 0.6, 1: 0.6}, "no difference: every run of both groups gave the same value"),
    ({0: 0.6, 1: 0.6}, {0: 0.7, 1: 0.7}, "with no spread at all within either group"),
    ({}, {0: 0.7}, "cannot compare: a group has no finished run"),
])
def test_small_and_degenerate_groups_are_words_not_nan(a, b, words):
    got = two_groups(a, b, points=True)
    assert words in got["verdict"]
    numbers = [v for part in ("difference", "seeds_needed") for v in [got[part]] if v is not None]
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in numbers)


def test_identical_groups_with_spread_say_no_evidence():
    a = {0: 0.60, 1: 0.62, 2: 0.64}
    got = two_groups(a, dict(a), points=True)
    assert got["verdict"].startswith("no difference") or got["verdict"].startswith("no evidence")
    assert got["seeds_needed"] is None


def test_metric_value_reads_best_final_and_summary_fields():
    history = pd.DataFrame({"epoch": [1, 2, 3], "val/acc1": [0.2, 0.5, 0.4], "val/loss": [2.0, 1.5, 1.7]})
    summary = {"total_time_s": 12.5, "time_to_target": {"train_s": 7.0}}
    assert metric_value(history, summary, "best val/acc1") == 0.5
    assert metric_value(history, summary, "final val/acc1") == 0.4
    assert metric_value(history, summary, "val/loss") == 1.5  # a bare column: its best, the lowest for a loss
    assert metric_value(history, summary, "time_to_target.train_s") == 7.0
    assert metric_value(history, summary, "total_time_s") == 12.5
    assert metric_value(history, {"time_to_target": {"train_s": None}}, "time_to_target.train_s") is None
