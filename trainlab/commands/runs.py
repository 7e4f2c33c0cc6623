"""`trainlab runs [dir ...]`: one table of every training run and sweep job under the given folders (default
./outputs and ./multirun): when it started, what it overrode, its status (completed, early_stopping,
interrupted, nan, running, failed, killed), epochs, best and final val/acc1 and val/loss, images/s and time.
It only reads: a run still being written is recognised by the lock trainlab holds on its folder."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from trainlab.core.errors import TrainlabError
from trainlab.core.fs import LOCK_NAME

USAGE = """usage: trainlab runs [DIR ...] [--sort COLUMN] [--filter KEY=VALUE ...] [--seeds] [--csv]

Every training run and sweep job under the DIRs (default: ./outputs and ./multirun), one row each, newest
first: started, run, overrides, status, epochs, best/final val/acc1 and val/loss, images/s, minutes.
  --sort COLUMN       sort by this column (largest first for numbers; e.g. --sort 'best val/acc1')
  --filter KEY=VALUE  keep runs whose column or override KEY equals VALUE (repeatable: all must hold),
                      e.g. --filter status=completed --filter optimizer=adam
  --seeds             one row per setting: the runs that differ only in `seed` as mean ± std (n), failed counted
  --csv               print CSV instead of the table
"""
DEFAULT_DIRS = ("outputs", "multirun")


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


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def find_runs(folders: list[Path]) -> list[Path]:
    """Folders holding a training run (trainlab's run.json) or a sweep job that failed before writing one."""
    found = set()
    for folder in folders:
        for marker in ("run.json", "error.txt"):
            for path in folder.rglob(marker):
                run_dir = path.parent
                if marker == "run.json" and "trainlab_version" not in _json(path):
                    continue
                if marker == "error.txt" and not (run_dir / ".hydra").is_dir():
                    continue
                found.add(run_dir)
    return sorted(found)


def describe(run_dir: Path) -> dict:
    summary = _json(run_dir / "summary.json")
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = [o for o in (yaml.safe_load(overrides_file.read_text()) or []) if not o.startswith("hydra.")] \
        if overrides_file.is_file() else []
    started = run_dir / ".hydra" / "config.yaml"
    started = started if started.is_file() else run_dir / "run.json" if (run_dir / "run.json").is_file() else run_dir
    if running(run_dir):
        status = "running"
    elif (run_dir / "error.txt").is_file() and not summary:
        status = "failed"
    else:
        status = summary.get("stopped") or "killed"  # no summary and nobody writing: killed (kill -9, power)
    row = {"started": datetime.fromtimestamp(started.stat().st_mtime).strftime("%Y-%m-%d %H:%M"),
           "run": str(run_dir), "overrides": " ".join(o for o in overrides if not o.startswith("resume=")),
           "status": status}
    if (run_dir / "metrics.csv").is_file():
        history = pd.read_csv(run_dir / "metrics.csv")
        if len(history):
            row["epochs"] = int(history["epoch"].iloc[-1])
            for column, best in (("val/acc1", "max"), ("val/loss", "min")):
                if column in history:
                    row[f"best {column}"] = float(getattr(history[column], best)())
                    row[f"final {column}"] = float(history[column].iloc[-1])
            if "throughput/train_ips" in history:
                row["images/s"] = float(history["throughput/train_ips"].mean())
    if summary.get("total_time_s") is not None:
        row["minutes"] = float(summary["total_time_s"]) / 60
    pairs = (o.split("=", 1) for o in overrides if "=" in o)
    row["_overrides"] = {k.lstrip("+~"): v for k, v in pairs if k.lstrip("+~") not in ("resume", "overwrite")}
    return row


def runs_table(folders: list[Path], sort: str | None = None, filters: list[str] = (),
               seeds: bool = False) -> pd.DataFrame:
    rows = [describe(d) for d in find_runs(folders)]
    for spec in filters:
        if "=" not in spec:
            raise TrainlabError(f"--filter takes KEY=VALUE (got {spec!r}), e.g. --filter status=completed")
        key, value = spec.split("=", 1)
        rows = [r for r in rows if str(r.get(key, r["_overrides"].get(key))) == value]
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "_overrides"} for r in rows])
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
    return table.sort_values(column, ascending=column in ("run", "overrides", "status") or
                             column.endswith("loss"), kind="stable", na_position="last")


def seed_groups(rows: list[dict]) -> pd.DataFrame:
    """The runs grouped by every override that differs between them except `seed`: n, mean and std of the
    best/final val/acc1 and val/loss, failed runs counted (groups.seed_table, as the sweep report does)."""
    from trainlab.analysis import groups

    keys = sorted({k for r in rows for k in r["_overrides"]})
    varying = [k for k in keys if k != groups.SEED and len({r["_overrides"].get(k) for r in rows}) > 1]
    frame = pd.DataFrame([{**{k: r["_overrides"].get(k, "") for k in varying},
                           **{k: v for k, v in r.items() if k != "_overrides"}} for r in rows])
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


def text_table(table: pd.DataFrame) -> str:
    """Words left-aligned, numbers right-aligned, two spaces between columns."""
    numeric = {c for c in table.columns if table[c].dtype.kind in "if"}
    cells = {c: [c] + [("" if pd.isna(v) else f"{v:.{1 if c in ('images/s', 'minutes') else 4}f}"
                        if table[c].dtype.kind == "f" else str(v)) for v in table[c]] for c in table.columns}
    widths = {c: max(map(len, values)) for c, values in cells.items()}
    lines = ["  ".join(cells[c][i].rjust(widths[c]) if c in numeric else cells[c][i].ljust(widths[c])
                       for c in table.columns).rstrip() for i in range(len(table) + 1)]
    return "\n".join(lines)
