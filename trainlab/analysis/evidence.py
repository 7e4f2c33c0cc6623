"""Is B better than A? The statistics behind `trainlab compare`, with the verdict each ends in.

Two classifiers on the same images: McNemar's exact test on the images only one of them gets right, and a 95%
confidence interval for the accuracy difference (paired Wald). Two recipes over seeds: each group's mean ± std, the
difference with a 95% Welch interval and p-value, a paired t-test when both groups ran the same seeds, and how many
seeds per group a two-sample t-test needs to tell the observed difference apart at 80% power. No correction for
comparing many pairs; seeds are one source of variance among others (the data split, the machine). What cannot be
estimated (one run per group, no spread at all) is said in words, never as NaN.
"""

from __future__ import annotations

import math

from scipy import stats

LEVEL = 0.95      # confidence intervals
ALPHA = 0.05      # the p-value below which a verdict says "better"
POWER = 0.80      # the power the seeds-needed figure aims at
MAX_SEEDS = 100_000


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def _amount(value: float, points: bool) -> str:
    return f"{100 * value:+.1f} points" if points else f"{value:+.4g}"


def _interval(low: float, high: float, points: bool) -> str:
    scale, fmt = (100, ".1f") if points else (1, ".4g")
    return f"[{scale * low:{fmt}}, {scale * high:{fmt}}]"


def _verdict(diff: float, low: float, high: float, p: float, higher_is_better: bool, points: bool, size: str) -> str:
    numbers = f"{_amount(diff, points)} {_interval(low, high, points)}, {_p(p)}, {size}"
    if p >= ALPHA:
        return f"no evidence of a difference at this size: {numbers}"
    winner = "B" if (diff > 0) == higher_is_better else "A"
    return f"{winner} is better: {numbers}"


def mcnemar(only_a: int, only_b: int, images: int) -> dict:
    """Two classifiers judged on the same `images`: `only_a` of them only A gets right, `only_b` only B. McNemar's
    exact test is the two-sided binomial test of min(only_a, only_b) out of the discordant pairs at 1/2; the
    interval is the paired Wald interval of acc_B - acc_A, whose variance is ((b + c) - (c - b)^2 / n) / n^2."""
    discordant = only_a + only_b
    diff = (only_b - only_a) / images if images else 0.0
    p = float(stats.binomtest(min(only_a, only_b), discordant, 0.5).pvalue) if discordant else 1.0
    se = math.sqrt(max(discordant - (only_b - only_a) ** 2 / images, 0.0)) / images if images else 0.0
    z = float(stats.norm.ppf(0.5 + LEVEL / 2))
    low, high = diff - z * se, diff + z * se
    if not discordant:
        verdict = f"no difference: A and B are right on the same {images} images"
    else:
        verdict = _verdict(diff, low, high, p, True, True, f"{images} images")
    return {"test": "McNemar, exact (binomial on the images only one of them gets right)",
            "interval": f"{LEVEL:.0%} paired Wald interval of accuracy B - A", "images": images,
            "only_a_right": only_a, "only_b_right": only_b, "difference": diff, "ci_low": low, "ci_high": high,
            "p_value": p, "verdict": verdict}


def _describe(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n if n else None
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"n": n, "mean": mean, "std": std}


def seeds_needed(diff: float, sd: float) -> int | None:
    """Runs per group a two-sided two-sample t-test (equal groups, level ALPHA) needs to detect `diff` with
    probability POWER when each run's spread is `sd`: the smallest n whose noncentral-t power reaches it. None when
    there is no difference to detect or no spread to judge it by; MAX_SEEDS + 1 when more than that."""
    if not diff or not sd:
        return None
    effect = abs(diff) / sd

    def power(n: int) -> float:
        df, shift = 2 * n - 2, effect * math.sqrt(n / 2)
        critical = stats.t.ppf(1 - ALPHA / 2, df)
        return float(stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift))

    low, high = 2, 2
    while power(high) < POWER:  # double, then bisect: the power grows with n
        if high > MAX_SEEDS:
            return MAX_SEEDS + 1
        low, high = high, high * 2
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if power(mid) < POWER else (low, mid)
    return high


def two_groups(a: dict, b: dict, higher_is_better: bool = True, points: bool = False) -> dict:
    """Two groups of runs, each {seed: value}. Welch's t-test and interval for mean(B) - mean(A); a paired t-test
    when both ran the same seeds (two or more); the seeds per group needed at POWER for the observed difference.
    `points`: the values are fractions shown as percentage points (accuracies)."""
    av, bv = list(a.values()), list(b.values())
    da, db = _describe(av), _describe(bv)
    out: dict = {"a": da, "b": db, "difference": None, "welch": None, "paired": None, "seeds_needed": None}
    if not av or not bv:
        out["verdict"] = "cannot compare: a group has no finished run"
        return out
    diff = db["mean"] - da["mean"]
    out["difference"] = diff
    if da["n"] < 2 or db["n"] < 2:
        out["verdict"] = (f"cannot tell yet: {_amount(diff, points)} from {da['n']} vs {db['n']} run(s); the spread "
                          "between seeds needs at least 2 runs per group (run more seeds)")
        return out
    va, vb = da["std"] ** 2, db["std"] ** 2
    se = math.sqrt(va / da["n"] + vb / db["n"])
    pooled = math.sqrt((va + vb) / 2)
    out["seeds_needed"] = seeds_needed(diff, pooled)
    if se == 0:
        out["verdict"] = ("no difference: every run of both groups gave the same value" if diff == 0 else
                          f"{_amount(diff, points)} with no spread at all within either group: every seed gave the "
                          "same value, so no test applies (check that the seed changes the runs)")
        return out
    sa, sb = va / da["n"], vb / db["n"]
    df = (sa + sb) ** 2 / (sa ** 2 / (da["n"] - 1) + sb ** 2 / (db["n"] - 1))  # Welch-Satterthwaite
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, df)) * se
    out["welch"] = {"t": t, "df": df, "p_value": p, "ci_low": diff - half, "ci_high": diff + half}
    chosen, name = out["welch"], f"Welch, {da['n']} vs {db['n']} seeds"
    common = sorted(set(a) & set(b), key=str)
    if len(common) >= 2 and set(a) == set(b):
        diffs = [b[s] - a[s] for s in common]
        dd = _describe(diffs)
        if dd["std"]:
            t_paired = dd["mean"] / (dd["std"] / math.sqrt(dd["n"]))
            p_paired = float(2 * stats.t.sf(abs(t_paired), dd["n"] - 1))
            half = float(stats.t.ppf(0.5 + LEVEL / 2, dd["n"] - 1)) * dd["std"] / math.sqrt(dd["n"])
            out["paired"] = {"seeds": len(common), "t": t_paired, "df": dd["n"] - 1, "p_value": p_paired,
                             "ci_low": dd["mean"] - half, "ci_high": dd["mean"] + half}
            chosen, name = out["paired"], f"paired over {len(common)} seeds"
    out["test"] = name
    out["verdict"] = _verdict(diff, chosen["ci_low"], chosen["ci_high"], chosen["p_value"], higher_is_better, points,
                              name)
    return out
