"""A sweep's jobs as one table, and the jobs that differ only in `seed` summarised as mean ± std (n): what
`trainlab report <multirun_dir>` shows and exports (seeds.csv, seeds.md, seeds.tex), with an optional pivot of
two overridden keys (`--rows optimizer --cols scheduler`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from trainlab.core.errors import TrainlabError

SEED = "seed"
# What each job contributes: (column, metrics.csv column, how the epochs are reduced).
METRICS = (("final val/acc1", "val/acc1", "last"), ("best val/acc1", "val/acc1", "max"),
           ("final val/loss", "val/loss", "last"), ("best val/loss", "val/loss", "min"))


def job_table(jobs: list[dict]) -> pd.DataFrame:
    """One row per job: its label, its overrides (one column per key that differs between jobs), status and the
    METRICS. Each job is {"job": label, "settings": {key: value}, "history": metrics.csv's frame or None,
    "summary": summary.json's dict, "failed": bool, "damaged": its one line or None} (record.run_dir reads them); a
    job without a history is `damaged`, `failed` or `not started`."""
    keys = sorted({k for job in jobs for k in job["settings"]})
    varying = [k for k in keys if len({job["settings"].get(k) for job in jobs}) > 1]
    rows = []
    for job in jobs:
        row = {"job": job["job"], **{k: job["settings"].get(k, "") for k in varying}}
        history = job["history"]
        if history is not None:
            row["status"] = job["summary"].get("stopped", "running")
            row["epochs"] = int(history["epoch"].iloc[-1])
            for name, column, how in METRICS:
                if column in history:
                    values = history[column].dropna()
                    row[name] = float(values.iloc[-1] if how == "last" else getattr(values, how)())
        else:
            row["status"] = "damaged" if job.get("damaged") else "failed" if job["failed"] else "not started"
        rows.append(row)
    return pd.DataFrame(rows)


def setting_columns(table: pd.DataFrame) -> list[str]:
    metric_names = {m[0] for m in METRICS}
    return [c for c in table.columns if c not in ("job", "status", "epochs", SEED) and c not in metric_names]


def seed_table(table: pd.DataFrame, by: list[str] | None = None) -> pd.DataFrame:
    """Jobs grouped by `by` (default: every overridden key but seed): n, the METRICS' mean and std over the jobs
    that produced metrics (pandas' sample std, ddof=1), and how many jobs of the group failed."""
    by = setting_columns(table) if by is None else by
    metric_names = [m[0] for m in METRICS if m[0] in table]
    done = table[table["status"] != "failed"] if "status" in table else table
    keyed = table.assign(_all="all") if not by else table
    keys = by or ["_all"]
    rows = []
    for values, group in keyed.groupby(keys, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        ok = group.loc[group.index.intersection(done.index)]
        row = {k: v for k, v in zip(keys, values) if k != "_all"}
        row["n"] = int(ok[metric_names[0]].notna().sum()) if metric_names else 0
        for name in metric_names:
            row[f"{name} mean"] = float(ok[name].mean())
            row[f"{name} std"] = float(ok[name].std())
        row["failed"] = int((group["status"] == "failed").sum()) if "status" in group else 0
        rows.append(row)
    return pd.DataFrame(rows)


def mean_std(frame: pd.DataFrame, name: str, digits: int = 4) -> pd.Series:
    """'0.9500 ± 0.0100' per row (just the mean for a single job)."""
    mean, std = frame[f"{name} mean"], frame[f"{name} std"]
    return pd.Series([f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if pd.notna(s) else "") if pd.notna(m) else "—"
                      for m, s in zip(mean, std)], index=frame.index)


def shown(seeds: pd.DataFrame) -> pd.DataFrame:
    """seed_table for people: one 'mean ± std' column per metric."""
    out = seeds[[c for c in seeds.columns if not c.endswith((" mean", " std")) and c != "failed"]].copy()
    for name, _, _ in METRICS:
        if f"{name} mean" in seeds:
            out[name] = mean_std(seeds, name)
    out["failed"] = seeds["failed"]
    return out


def pivot(table: pd.DataFrame, rows: str, cols: str, metric: str = "final val/acc1") -> pd.DataFrame:
    """`metric` as mean ± std (n) over seeds, with one overridden key down and another across."""
    for key in (rows, cols):
        if key not in table:
            choices = ", ".join(setting_columns(table) + ([SEED] if SEED in table else [])) \
                or "none (the jobs share every override)"
            raise TrainlabError(f"--rows/--cols: '{key}' is not an override that differs between the jobs; "
                                f"choose from {choices}")
    if metric not in table:
        raise TrainlabError(f"--metric: '{metric}' is not one of {', '.join(m[0] for m in METRICS)}")
    seeds = seed_table(table, [rows, cols])
    seeds["cell"] = mean_std(seeds, metric) + seeds["n"].map(lambda n: f" (n={n})")
    grid = seeds.pivot(index=rows, columns=cols, values="cell").fillna("—")
    grid.columns.name = None
    return grid.reset_index().rename(columns={rows: f"{rows} \\ {cols}"})


def markdown(frame: pd.DataFrame) -> str:
    cells = frame.astype(str)
    lines = ["| " + " | ".join(map(str, cells.columns)) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(r) + " |" for r in cells.values.tolist()]
    return "\n".join(lines) + "\n"


def latex(frame: pd.DataFrame) -> str:
    escape = lambda text: (str(text).replace("\\", r"\textbackslash{}").replace("_", r"\_")  # noqa: E731
                           .replace("%", r"\%").replace("&", r"\&").replace("#", r"\#").replace("±", r"$\pm$"))
    lines = [r"\begin{tabular}{" + "l" * len(frame.columns) + "}", r"\hline",
             " & ".join(escape(c) for c in frame.columns) + r" \\", r"\hline"]
    lines += [" & ".join(escape(v) for v in row) + r" \\" for row in frame.astype(str).values.tolist()]
    return "\n".join(lines + [r"\hline", r"\end{tabular}"]) + "\n"


def export(frame: pd.DataFrame, out: Path, stem: str) -> list[Path]:
    """`stem`.csv (numbers), .md and .tex (mean ± std text) beside the report."""
    paths = [out / f"{stem}.csv", out / f"{stem}.md", out / f"{stem}.tex"]
    frame.to_csv(paths[0], index=False)
    readable = shown(frame) if any(c.endswith(" mean") for c in frame.columns) else frame
    paths[1].write_text(markdown(readable))
    paths[2].write_text(latex(readable))
    return paths


# Columns where lower is better (a loss, a time, memory); every other metric is better higher.
LOWER_IS_BETTER = ("loss", "time", "_s", "memory", "skipped")
# Fractions shown as percentage points.
FRACTIONS = ("acc1", "acc5", "f1", "precision", "recall")


def lower_is_better(metric: str) -> bool:
    return any(word in metric for word in LOWER_IS_BETTER)


def is_fraction(metric: str) -> bool:
    return metric.split()[-1].split("/")[-1].split(".")[-1] in FRACTIONS


def metric_value(history: pd.DataFrame | None, summary: dict, metric: str) -> float | None:
    """One number per run for `metric`: "best <column>" or "final <column>" of metrics.csv (best: the highest, or
    the lowest where lower is better), a bare column (its best), or a summary.json field ("total_time_s",
    "time_to_target.train_s"). None when the run does not have it (not reached, not recorded)."""
    how, _, column = metric.partition(" ") if metric.startswith(("best ", "final ")) else ("", "", metric)
    if history is not None and column in history:
        values = history[column].dropna()
        if not len(values):
            return None
        if how == "final":
            return float(values.iloc[-1])
        return float(values.min() if lower_is_better(column) else values.max())
    if how:
        return None
    value = summary
    for part in metric.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def pivot_evidence(table: pd.DataFrame, rows: str, cols: str, metric: str) -> pd.DataFrame:
    """Is it better than the first? Each value of the pivot's compared key (`rows`, or `cols` when `rows` is the
    seed) against its first value that has finished runs, over seeds, within each value of the other key (unless
    that is the seed): trainlab.analysis.evidence.two_groups, one row per pair."""
    from trainlab.analysis.evidence import two_groups

    key, within = (cols, None) if rows == SEED else (rows, None if cols == SEED else cols)
    done = table[table[metric].notna()] if metric in table else table.iloc[0:0]
    values = sorted(done[key].unique(), key=str) if len(done) else []
    slices = [(None, done)] if within is None else [(w, done[done[within] == w]) for w in
                                                     sorted(done[within].unique(), key=str)]

    def by_seed(part: pd.DataFrame) -> dict:
        seeds = part[SEED] if SEED in part and part[SEED].is_unique else part.index
        return dict(zip(seeds, part[metric]))

    out = []
    for value_within, part in slices:
        base = part[part[key] == values[0]]
        for value in values[1:]:
            other = part[part[key] == value]
            found = two_groups(by_seed(base), by_seed(other), not lower_is_better(metric), is_fraction(metric))
            chosen = found["paired"] or found["welch"]
            out.append({**({within: value_within} if within else {}), "A": f"{key}={values[0]}",
                        "B": f"{key}={value}", "n": f"{len(base)} vs {len(other)}",
                        "difference": found["difference"], **{k: (chosen or {}).get(k) for k in ("ci_low", "ci_high")},
                        "p": (chosen or {}).get("p_value"), "test": found.get("test", ""),
                        "seeds_needed": found["seeds_needed"], "verdict": found["verdict"]})
    return pd.DataFrame(out)
