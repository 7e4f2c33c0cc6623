"""`trainlab runs [dir ...]`: one table of every training run and sweep job under the given folders (default
./outputs and ./multirun): when it started, what it overrode, its status (completed, early_stopping,
interrupted, nan, running, failed, killed), epochs, best and final val/acc1 and val/loss, images/s and time.
It only reads: a run still being written is recognised by the lock trainlab holds on its folder."""

from __future__ import annotations

import os
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

from trainlab.core.errors import TrainlabError
from trainlab.core.fs import LOCK_NAME
from trainlab.record.run_dir import (
    ERROR_TXT,
    OUTPUTS_ROOT,
    RUN_JSON,
    SUMMARY_JSON,
    SWEEPS_ROOT,
    find_runs,
    read_json,
    read_metrics,
    read_overrides,
    read_settings,
)

USAGE = """usage: trainlab runs [DIR ...] [--sort COLUMN] [--filter KEY=VALUE ...] [--seeds] [--csv]

Every training run and sweep job under the DIRs (default: ./outputs and ./multirun), one row each, newest
first: started, run, overrides, status, epochs, best/final val/acc1 and val/loss, images/s, minutes.
  --sort COLUMN       sort by this column (largest first for numbers; e.g. --sort 'best val/acc1')
  --filter KEY=VALUE  keep runs whose column or override KEY equals VALUE (repeatable: all must hold),
                      e.g. --filter status=completed --filter optimizer=adam
  --seeds             one row per setting: the runs that differ only in `seed` as mean ± std (n), failed counted
  --csv               print CSV instead of the table
"""
DEFAULT_DIRS = (OUTPUTS_ROOT, SWEEPS_ROOT)


def running(run_dir: Path) -> bool:
    """Another process holds trainlab's lock on the folder (a shared lock attempt, so nothing is written)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def describe(run_dir: Path) -> dict:
    """The run's row; a run whose files cannot be read is shown as `damaged`, with the reason, not skipped."""
    try:
        summary, overrides, history = read_json(run_dir, SUMMARY_JSON), read_overrides(run_dir), read_metrics(run_dir)
    except TrainlabError as e:
        summary, overrides, history, damaged = {}, [], None, str(e)
    else:
        damaged = None
    started = run_dir / ".hydra" / "config.yaml"
    started = started if started.is_file() else run_dir / RUN_JSON if (run_dir / RUN_JSON).is_file() else run_dir
    if running(run_dir):
        status = "running"
    elif damaged:
        status = "damaged"
    elif (run_dir / ERROR_TXT).is_file() and not summary:
        status = "failed"
    else:
        status = summary.get("stopped") or "killed"  # no summary and nobody writing: killed (kill -9, power)
    row = {"started": datetime.fromtimestamp(started.stat().st_mtime).strftime("%Y-%m-%d %H:%M"),
           "run": str(run_dir), "overrides": " ".join(o for o in overrides if not o.startswith("resume=")),
           "status": status}
    if damaged:
        row["_damaged"] = damaged
    if history is not None:
        row["epochs"] = int(history["epoch"].iloc[-1])
        for column, best in (("val/acc1", "max"), ("val/loss", "min")):
            if column in history:
                row[f"best {column}"] = float(getattr(history[column], best)())
                row[f"final {column}"] = float(history[column].iloc[-1])
        if "throughput/train_ips" in history:
            row["images/s"] = float(history["throughput/train_ips"].mean())
        missing = [c for c in ("val/acc1", "val/loss", "throughput/train_ips") if c not in history]
        if missing:  # hand-edited, or written by another version: shown without them, and said
            row["_damaged"] = (f"{run_dir / 'metrics.csv'} has no {', '.join(missing)} column: shown without "
                               f"{'it' if len(missing) == 1 else 'them'}")
    if summary.get("total_time_s") is not None:
        row["minutes"] = float(summary["total_time_s"]) / 60
    row["_overrides"] = read_settings(run_dir) if not damaged else {}
    return row


def runs_table(folders: list[Path], sort: str | None = None, filters: list[str] = (),
               seeds: bool = False) -> pd.DataFrame:
    rows = [describe(d) for d in find_runs(folders)]
    damaged = [r["_damaged"] for r in rows if "_damaged" in r]
    for spec in filters:
        if "=" not in spec:
            raise TrainlabError(f"--filter takes KEY=VALUE (got {spec!r}), e.g. --filter status=completed")
        key, value = spec.split("=", 1)
        rows = [r for r in rows if str(r.get(key, r["_overrides"].get(key))) == value]
    table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    if table.empty:
        return table
    if seeds:
        table = seed_groups(rows)
        if sort is None:
            return table
    column = sort or "started"
    if column not in table:
        from trainlab.core.suggest import did_you_mean

        raise TrainlabError(f"--sort: no column {column!r}{did_you_mean(column, table.columns)}; the columns: "
                            f"{', '.join(table.columns)}")
    table = table.sort_values(column, ascending=column in ("run", "overrides", "status") or
                              column.endswith("loss"), kind="stable", na_position="last")
    table.attrs["damaged"] = damaged
    return table


def seed_groups(rows: list[dict]) -> pd.DataFrame:
    """The runs grouped by every override that differs between them except `seed`: n, mean and std of the
    best/final val/acc1 and val/loss, failed runs counted (groups.seed_table, as the sweep report does)."""
    from trainlab.analysis import groups

    keys = sorted({k for r in rows for k in r["_overrides"]})
    varying = [k for k in keys if k != groups.SEED and len({r["_overrides"].get(k) for r in rows}) > 1]
    frame = pd.DataFrame([{**{k: r["_overrides"].get(k, "") for k in varying},
                           **{k: v for k, v in r.items() if not k.startswith("_")}} for r in rows])
    return groups.seed_table(frame, varying)


def list_runs(args: list[str]) -> None:
    folders, sort, filters, as_csv, seeds = [], None, [], False, False
    items = iter(args)
    for item in items:
        if item in ("--sort", "--filter"):
            value = next(items, None)
            if value is None:
                raise TrainlabError(f"{item} needs a value; see trainlab runs --help")
            if item == "--sort":
                sort = value
            else:
                filters.append(value)
        elif item.startswith(("--sort=", "--filter=")):
            key, value = item.split("=", 1)
            sort, filters = (value, filters) if key == "--sort" else (sort, filters + [value])
        elif item == "--csv":
            as_csv = True
        elif item == "--seeds":
            seeds = True
        elif item.startswith("-"):
            from trainlab.core.suggest import did_you_mean

            options = ["--sort", "--filter", "--seeds", "--csv"]
            raise TrainlabError(f"unknown option {item}{did_you_mean(item, options)}; see trainlab runs --help")
        else:
            folders.append(Path(item))
    for folder in folders:
        if not folder.is_dir():
            raise TrainlabError(f"{folder} is not a directory: pass folders that hold trainlab runs (outputs/, "
                                "multirun/ or any run or sweep directory)")
    folders = folders or [Path(d) for d in DEFAULT_DIRS if Path(d).is_dir()]
    table = runs_table(folders, sort, filters, seeds)
    if table.empty:
        where = ", ".join(map(str, folders)) or "./outputs or ./multirun (neither exists here)"
        print(f"no trainlab runs under {where}" + (" match the filters" if filters else ""))
        return
    if as_csv:  # numbers (seeds: mean and std columns), for pandas or a spreadsheet
        print(table.to_csv(index=False), end="")
        return
    if seeds:
        from trainlab.analysis.groups import shown

        table = shown(table)
    print(text_table(table))
    for reason in table.attrs.get("damaged", []):  # the table still lists them; what is wrong goes to stderr
        print(f"trainlab: {reason}", file=sys.stderr)


def text_table(table: pd.DataFrame) -> str:
    """Words left-aligned, numbers right-aligned, two spaces between columns."""
    numeric = {c for c in table.columns if table[c].dtype.kind in "if"}
    cells = {c: [c] + [("" if pd.isna(v) else f"{v:.{1 if c in ('images/s', 'minutes') else 4}f}"
                        if table[c].dtype.kind == "f" else str(v)) for v in table[c]] for c in table.columns}
    widths = {c: max(map(len, values)) for c, values in cells.items()}
    lines = ["  ".join(cells[c][i].rjust(widths[c]) if c in numeric else cells[c][i].ljust(widths[c])
                       for c in table.columns).rstrip() for i in range(len(table) + 1)]
    return "\n".join(lines)


def main(args: list[str]) -> None:
    list_runs(args)
