"""What a run folder is and holds, decided here and nowhere else: trainlab's mark on a folder, the claim on a run
directory (new, empty, or a run of trainlab's own: never a folder of the user's), reading its files (run.json,
summary.json, metrics.csv, .hydra/overrides.yaml, ...) with one line naming a damaged one, where outputs beside a
run go, and `outputs/` as the default place of runs."""

from __future__ import annotations

import json
import logging
import shutil
from datetime import datetime
from pathlib import Path

import pandas as pd
import yaml

from trainlab.core.errors import TrainlabError, yaml_error
from trainlab.core.fs import LOCK_NAME, FolderLock, contents, free_run_dir

log = logging.getLogger(__name__)

OUTPUTS_ROOT = Path("outputs")  # where hydra.run.dir puts runs by default; `latest` and dates look here
SWEEPS_ROOT = Path("multirun")  # where hydra.sweep.dir puts sweeps by default
RUN_JSON, SUMMARY_JSON, METRICS_CSV, ERROR_TXT = "run.json", "summary.json", "metrics.csv", "error.txt"
CONFUSION_DIR = "confusion"  # val_epochNNN.csv / train_epochNNN.csv
# What a run, an evaluation or a summary leaves in its directory: the names `overwrite=true` may remove.
RUN_ENTRIES = (RUN_JSON, SUMMARY_JSON, METRICS_CSV, "classes.csv", "train.log", "evaluate.log", "summary.log",
               ERROR_TXT, "checkpoints", "tensorboard", CONFUSION_DIR, "plots", ".hydra", "report.md",
               "report.html", "report_files", "metrics.json", "predictions.csv", "confusion.csv", "summary.txt",
               "requirements.txt", "activations.csv", "lr_find.csv", "lr_find.json", "lr_find.png", "lr_find.log")
# Any of these means "a trainlab run (or evaluation, or summary) lives here".
RUN_MARKERS = (RUN_JSON, "checkpoints", METRICS_CSV, "metrics.json", "summary.txt", ".hydra")
# What an earlier training job leaves: a sweep job's folder holding one of these is not started over silently.
JOB_RECORD = (RUN_JSON, "checkpoints", METRICS_CSV, "metrics.json")
_NOT_SETTINGS = ("resume", "overwrite")  # the command's keys, not the run's


def holds_run(folder: Path) -> bool:
    """A trainlab run (or evaluation, or summary) lives here: the folder has a run's files *and* trainlab's mark
    on it (the lock file trainlab leaves in every folder it claims, or a run.json trainlab wrote). Another
    tool's output folder (Hydra's .hydra/, Lightning's checkpoints/) is not one, so overwrite=true never
    removes anything from it."""
    folder = Path(folder)
    if not any((folder / name).exists() for name in RUN_MARKERS):
        return False
    if (folder / LOCK_NAME).exists():
        return True
    try:
        return "trainlab_version" in json.loads((folder / RUN_JSON).read_text())
    except (OSError, ValueError, TypeError):
        return False


def is_training_run(folder: Path) -> bool:
    """A training run (its run.json) or a sweep job that failed before writing one (its error.txt): what
    `trainlab runs`, `report` and `diagnose` list."""
    folder = Path(folder)
    return ((folder / RUN_JSON).is_file() or (folder / ERROR_TXT).is_file()) and holds_run(folder)


def earlier_record(folder: Path) -> list[str]:
    """What an earlier training job left in `folder` (run.json, checkpoints, ...), in that order."""
    return [name for name in JOB_RECORD if (Path(folder) / name).exists()]


def claim_run_dir(folder: Path, mode: str = "new", option: str = "hydra.run.dir") -> FolderLock:
    """Make `folder` this process's run directory and lock it for the process's lifetime.

    mode "new": the folder must be missing or empty; "resume": it continues the run already there;
    "overwrite": a trainlab run there is replaced (its files removed first; nothing else is touched).
    A folder of the user's (not empty, no trainlab run in it) is never accepted."""
    folder = Path(folder).expanduser()
    ours = holds_run(folder)  # decided before the lock file is made in it
    if folder.is_dir() and contents(folder) and not ours:
        raise _not_a_run(folder, contents(folder), option)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(folder)
        free = lock.acquire()
    except OSError as e:
        raise TrainlabError(f"cannot create the run directory {folder}: {e.strerror or e}; "
                            f"pick a writable {option}=<folder>") from None
    if not free:
        raise TrainlabError(f"{folder} is in use: {lock.holder()} of trainlab is writing into it; wait for it to "
                            f"finish or pick another {option}=<folder>")
    found = contents(folder)
    if found and mode != "resume":
        if not ours:
            lock.release()
            raise _not_a_run(folder, found, option)
        if mode == "new":
            lock.release()
            raise TrainlabError(f"{folder} already holds a trainlab run: continue it with resume={folder}, pick "
                                f"another {option}=<folder>, or pass overwrite=true to replace it")
        remove_run_entries(folder)
    return lock


def _not_a_run(folder: Path, found: list[str], option: str) -> TrainlabError:
    return TrainlabError(f"{folder} is not empty and holds no trainlab run ({', '.join(found[:3])}"
                         f"{', ...' if len(found) > 3 else ''}): trainlab writes only into new or empty folders; "
                         f"pick another {option}=<folder>")


def remove_run_entries(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """`overwrite=true`: remove what an earlier trainlab run wrote into `folder` (the names in RUN_ENTRIES,
    nothing else), so its checkpoints and event files cannot mix with the new run's."""
    removed = [name for name in RUN_ENTRIES if name not in keep and (folder / name).exists()]
    for name in removed:
        target = folder / name
        shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    if removed:
        log.warning("overwrite=true: removed the earlier run's %s from %s", ", ".join(removed), folder)


STORED_FIX = ("the run folder was copied, synced or edited and the file damaged; restore it from a complete copy, or "
              "leave this run out")


def _damaged(path: Path, what: str) -> TrainlabError:
    return TrainlabError(f"{path} is damaged ({what}): the run folder was copied, synced or written only in part; "
                         "restore the file from a complete copy, or leave this run out")


def read_json(folder: Path, name: str) -> dict:
    """One of a run's JSON files (run.json, summary.json, metrics.json): {} when it is not there; a file that is
    empty, truncated or not a JSON object is one line naming it."""
    path = Path(folder) / name
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _damaged(path, f"not valid JSON: {' '.join(str(e).split())[:80]}") from None
    if not isinstance(value, dict):
        raise _damaged(path, "not a JSON object")
    return value


def read_metrics(folder: Path) -> pd.DataFrame | None:
    """metrics.csv, one row per epoch; None when the run has none yet. Empty, truncated or edited files whose
    rows have no epoch are one line naming the file."""
    path = Path(folder) / METRICS_CSV
    if not path.is_file():
        return None
    try:
        history = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as e:  # EmptyDataError is a ValueError
        raise _damaged(path, f"not a readable CSV: {' '.join(str(e).split())[:80]}") from None
    if "epoch" not in history or not len(history) or not pd.api.types.is_numeric_dtype(history["epoch"]):
        raise _damaged(path, "no rows with an epoch number")
    return history


def read_overrides(folder: Path) -> list[str]:
    """The command line's overrides the run (or sweep job) first started with, hydra.* left out."""
    path = Path(folder) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        items = yaml.safe_load(path.read_text()) or []
    except yaml.YAMLError as e:
        raise yaml_error(e, path, STORED_FIX) from None
    except OSError as e:
        raise _damaged(path, f"unreadable: {e.strerror or e}") from None
    if not isinstance(items, list):
        raise _damaged(path, "not a list of overrides")
    return [str(i) for i in items if not str(i).startswith("hydra.")]


def read_settings(folder: Path) -> dict[str, str]:
    """The run's overrides as key -> value (`+`/`~` dropped; resume= and overwrite= are the command's)."""
    pairs = (o.split("=", 1) for o in read_overrides(folder) if "=" in o)
    return {k.lstrip("+~"): v for k, v in pairs if k.lstrip("+~") not in _NOT_SETTINGS}


def read_choices(folder: Path) -> dict[str, str] | None:
    """The config group options the run first started with (Hydra's runtime.choices in .hydra/hydra.yaml, Hydra's
    own groups left out), or None when the folder has no readable record of them."""
    path = Path(folder) / ".hydra" / "hydra.yaml"
    try:
        choices = ((yaml.safe_load(path.read_text()) or {}).get("hydra") or {}).get("runtime", {}).get("choices")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not isinstance(choices, dict):
        return None
    return {str(k): v for k, v in choices.items() if not str(k).startswith("hydra")}


def read_config(folder: Path) -> dict:
    """The run's composed config: Hydra's .hydra/config.yaml, else the one in run.json."""
    path = Path(folder) / ".hydra" / "config.yaml"
    if path.is_file():
        try:
            return yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise yaml_error(e, path, STORED_FIX) from None
        except OSError as e:
            raise _damaged(path, f"unreadable: {e.strerror or e}") from None
    return read_json(folder, RUN_JSON).get("config", {})


def read_activations(folder: Path) -> pd.DataFrame | None:
    path = Path(folder) / "activations.csv"
    if not path.is_file():
        return None
    try:
        return pd.read_csv(path, dtype={"layer": str})  # module names like "0.2" stay text
    except (OSError, ValueError) as e:
        raise _damaged(path, f"not a readable CSV: {' '.join(str(e).split())[:80]}") from None


def class_count(folder: Path) -> int | None:
    path = Path(folder) / "classes.csv"
    try:
        return len(pd.read_csv(path)) if path.is_file() else None
    except (OSError, ValueError):
        raise _damaged(path, "not a readable CSV") from None


def best_value(folder: Path) -> float | None:
    """The best value of the run's checkpoint.monitor (what a sweeper such as Optuna optimises)."""
    summary = read_json(folder, SUMMARY_JSON)
    return (summary.get("best") or {}).get(summary.get("monitor"))


def sweep_jobs(sweep_dir: Path) -> list[Path]:
    """A sweep folder's training jobs, in job order."""
    sweep_dir = Path(sweep_dir)
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and is_training_run(p)] if sweep_dir.is_dir() else []
    return sorted(jobs, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))


def find_runs(folders: list[Path]) -> list[Path]:
    """The training runs (and failed sweep jobs) at any depth under `folders`."""
    found = {path.parent for folder in folders for marker in (RUN_JSON, ERROR_TXT) for path in folder.rglob(marker)}
    return sorted(d for d in found if is_training_run(d))


def default_folder(kind: str) -> str:
    """The default folder of a new run (`run`), sweep (`sweep`) or other output (`eval`, `summary`, `lr_find`, ...):
    `outputs/<date>/<time>`, `multirun/<date>/<time>`, `outputs/<kind>/<date>/<time>`. conf/ reads it as
    `${trainlab.outputs:<kind>}`."""
    stamp = datetime.now()
    root = SWEEPS_ROOT if kind == "sweep" else OUTPUTS_ROOT if kind == "run" else OUTPUTS_ROOT / kind
    return str(root / f"{stamp:%Y-%m-%d}" / f"{stamp:%H-%M-%S}")


def beside_run(ckpt: Path, kind: str, label: str) -> Path:
    """Where a command's outputs for a checkpoint go: beside the checkpoint's run when it sits in one
    (`<run>/<kind>/<label>-<time>`), else under outputs/<kind>/<date>/ (never into a folder of the user's), at a
    name no other output holds."""
    stamp = datetime.now()
    run = Path(ckpt).parent.parent
    if Path(ckpt).parent.name == "checkpoints" and (run / RUN_JSON).is_file():
        return free_run_dir(run / kind / f"{label}-{stamp:%Y-%m-%d_%H-%M-%S}")
    return free_run_dir(OUTPUTS_ROOT / kind / f"{stamp:%Y-%m-%d}" / f"{label}-{stamp:%H-%M-%S}")


def diagnose_run(folder: Path) -> list:
    """The findings of analysis.diagnostics for a run folder (its metrics.csv, summary.json, classes.csv and
    activations.csv)."""
    from trainlab.analysis.diagnostics import diagnose

    history = read_metrics(folder)
    if history is None:
        raise TrainlabError(f"{folder} has no metrics.csv: point at a trainlab run directory")
    return diagnose(history, read_json(folder, SUMMARY_JSON) or None, class_count(folder), read_activations(folder))
