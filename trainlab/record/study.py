"""A search's study (`hydra/sweeper=search`): an ordinary Optuna study, kept by default in the sweep folder as
Optuna's journal file (several processes, and machines sharing the folder, work on it at once; `storage=` may name
an RDB URL instead), read back by `optuna.load_study` and optuna-dashboard. This module opens it, builds the pruner
named in the config, lets a training job report each epoch (`TrialReport`), and writes search.csv. Optuna is
imported only here and by the sweeper: `pip install 'trainlab[optuna]'`."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from trainlab.core.errors import ConfigError, TrainlabError
from trainlab.core.fs import atomic_write_text

JOURNAL = "optuna.journal"    # the default storage, in the sweep folder
SEARCH_CSV = "search.csv"     # one row per trial
WORKERS = ".search"           # in the sweep folder: one lock per process working on the study, and the ask lock
PRUNERS = ("median", "percentile", "successive_halving", "hyperband", "none")
FIXED_COLUMNS = ["number", "state", "value", "epochs", "started", "ended", "folder"]  # then one per parameter
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def optuna():
    try:
        import optuna as module
    except ImportError:
        raise ConfigError("hydra/sweeper=search needs Optuna: pip install 'trainlab[optuna]'") from None
    module.logging.set_verbosity(module.logging.WARNING)  # trainlab says what happens, one line per trial
    return module


def storage_url(spec: str | None, sweep_dir: Path) -> str:
    """The storage as given (`sqlite:///...`, `postgresql://...`: an RDB URL; anything else: a journal file's
    path), or the journal file in the sweep folder."""
    if spec in (None, "", "null"):
        return str(Path(sweep_dir) / JOURNAL)
    return str(spec)


def open_storage(url: str):
    """Optuna's storage for `url`: an RDB URL as Optuna opens it, or a journal file (made when missing)."""
    optuna()
    if "://" in url:
        return url
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    path = Path(url).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The open(O_EXCL) lock works on network file systems too (NFS), where a study shared by machines lives.
    backend = JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path)))
    return JournalStorage(backend)


def make_pruner(name: str, args: dict | None):
    """One of Optuna's pruners by name, with its own parameters (`hydra.sweeper.pruner_args`)."""
    pruners = optuna().pruners
    kinds = {"median": pruners.MedianPruner, "percentile": pruners.PercentilePruner,
             "successive_halving": pruners.SuccessiveHalvingPruner, "hyperband": pruners.HyperbandPruner,
             "none": pruners.NopPruner}
    if str(name) not in kinds:
        raise ConfigError(f"hydra.sweeper.pruner={name} is not a pruner: pick one of {', '.join(PRUNERS)}")
    try:
        return kinds[str(name)](**dict(args or {}))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.pruner_args do not suit the {name} pruner ({e}): see Optuna's "
                          f"{kinds[str(name)].__name__} for its parameters") from None


def load(url: str, name: str, pruner=None):
    try:
        return optuna().load_study(study_name=name, storage=open_storage(url), pruner=pruner)
    except KeyError:
        raise TrainlabError(f"no Optuna study {name!r} in {url}") from None


@dataclass
class TrialReport:
    """What a training job of a search tells its trial: the monitored value after each epoch, and whether the
    pruner stops it there. Plain values only, so the training processes (DDP) can be handed it; only rank 0
    reports."""
    storage: str
    study: str
    number: int
    pruner: str
    pruner_args: dict = field(default_factory=dict)
    _trial: object = field(default=None, repr=False, compare=False)

    def prune(self, epoch: int, value: float | None) -> bool:
        """Report `value` (the epoch's monitored metric) as the trial's value at step `epoch`; True when the pruner
        says to stop. A non-finite value is not reported (the pruner compares numbers)."""
        if self._trial is None:
            study = load(self.storage, self.study, make_pruner(self.pruner, self.pruner_args))
            trial_id = next(t._trial_id for t in study.get_trials(deepcopy=False) if t.number == self.number)
            self._trial = optuna().trial.Trial(study, trial_id)
        if value is None or not math.isfinite(value):
            return False
        self._trial.report(float(value), epoch)
        return self._trial.should_prune()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_trial": None}


def worker_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def trial_rows(study, sweep_dir: Path) -> list[dict]:
    """One row per trial: number, state, value, epochs (the last epoch it reported), started, ended, folder, and its
    parameters, one column each."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        folder = t.user_attrs.get("folder") or str(Path(sweep_dir) / str(t.number))
        rows.append({"number": t.number, "state": STATES.get(t.state.name, t.state.name.lower()),
                     "value": t.value, "epochs": max(t.intermediate_values, default=None),
                     "started": t.datetime_start.isoformat(timespec="milliseconds") if t.datetime_start else None,
                     "ended": t.datetime_complete.isoformat(timespec="milliseconds") if t.datetime_complete else None,
                     "folder": folder, **t.params})
    return rows


def write_record(study, sweep_dir: Path) -> None:
    """search.csv, and the best trial as Hydra's Optuna sweeper writes it (optimization_results.yaml), which the
    end of `trainlab train -m` and `trainlab report` read for either sweeper."""
    import yaml

    from trainlab.record.sweep import note

    rows = trial_rows(study, sweep_dir)  # the study read once
    write_search_csv(rows, sweep_dir)
    try:
        best = study.best_trial
    except ValueError:  # no trial completed yet
        best = None
    note(Path(sweep_dir), "search", {
        "study": study.study_name, "trials": {str(r["number"]): r["state"] for r in rows},
        "best": {"number": best.number, "value": best.value, "params": best.params,
                 "folder": best.user_attrs.get("folder")} if best else None})
    if best is None:
        return
    atomic_write_text(Path(sweep_dir) / "optimization_results.yaml", yaml.safe_dump(
        {"name": "trainlab-search", "best_params": dict(best.params), "best_value": float(best.value)},
        sort_keys=False))


def write_search_csv(rows: list[dict], sweep_dir: Path) -> Path:
    import pandas as pd

    path = Path(sweep_dir) / SEARCH_CSV
    params = sorted({k for row in rows for k in row} - set(FIXED_COLUMNS))
    atomic_write_text(path, pd.DataFrame(rows).reindex(columns=FIXED_COLUMNS + params).to_csv(index=False))
    return path


def sweeper_settings(sweep_dir: Path) -> dict:
    """The search's settings as sweep.json recorded them (the command line's hydra.sweeper.* overrides applied)."""
    from trainlab.record.sweep import _record, recorded

    settings = dict(_record(Path(sweep_dir)).get("sweeper") or {})
    for override in recorded(Path(sweep_dir))[1]:
        key, _, value = override.lstrip("+").partition("=")
        if key.startswith("hydra.sweeper.") and "." not in key[len("hydra.sweeper."):]:
            settings[key[len("hydra.sweeper."):]] = value
    return settings


def importances(sweep_dir: Path) -> dict[str, float] | str:
    """The parameters' importances for the study of the search in `sweep_dir` (fANOVA, seeded), or why there are
    none."""
    settings = sweeper_settings(sweep_dir)
    try:
        study = load(storage_url(settings.get("storage"), sweep_dir), str(settings.get("study_name") or "trainlab"))
        module = optuna()
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == module.trial.TrialState.COMPLETE]
        if len(complete) < 2:
            return "they need at least two completed trials"
        evaluator = module.importance.FanovaImportanceEvaluator(seed=0)
        return dict(module.importance.get_param_importances(study, evaluator=evaluator))
    except (TrainlabError, OSError, ValueError, RuntimeError) as e:
        return f"the study could not be read ({' '.join(str(e).split())})"
