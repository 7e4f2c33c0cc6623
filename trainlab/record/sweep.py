"""A sweep (`trainlab train -m ...`) resumed in its own directory: `trainlab train -m resume=<multirun_dir>`.

Hydra's own record of the sweep (`<multirun_dir>/multirun.yaml`: the command line's overrides) is replayed
with the same `hydra.sweep.dir`, so the basic sweeper numbers the jobs as before. Each job then looks at
its own directory: a finished run is skipped (its files are not touched), an interrupted one continues from
its checkpoint exactly as `resume=` does for a single run, a failed one (or one killed before its first
checkpoint) starts again, and a job that never started runs. Optuna studies continue from their storage."""

from __future__ import annotations

import json
import logging
import warnings
from datetime import datetime
from pathlib import Path

import yaml

from trainlab.core.errors import TrainlabError
from trainlab.core.fs import atomic_write_text

log = logging.getLogger(__name__)

RECORD = "sweep.json"  # trainlab's record of how the sweep started (written before the first job)
HYDRA_RECORD = "multirun.yaml"  # Hydra's (basic sweeper only; rewritten by every launch): read for older sweeps
# Keys of the command, not of the sweep: they may differ between the start and a resume.
_OWN = ("resume", "overwrite", "hydra.sweep.dir", "hydra.output_subdir", "hydra.mode")
FINISHED = ("completed", "early_stopping", "nan", "pruned")  # a result: running it again would give the same


def is_sweep_dir(path) -> bool:
    folder = Path(str(path)).expanduser()
    return (folder / RECORD).is_file() or (folder / HYDRA_RECORD).is_file()


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def record_start(sweep_dir: Path, args: list[str], multirun_flags: set[str], sweeper: dict | None) -> None:
    """sweep.json: the command line's overrides and the sweeper's settings, what `resume=` replays."""
    given = [a for a in args if a not in multirun_flags and _key(a) not in _OWN]
    if sweep_dir.is_dir() and any(p.name != ".trainlab.lock" for p in sweep_dir.iterdir()) \
            and not is_sweep_dir(sweep_dir):
        raise TrainlabError(f"hydra.sweep.dir={sweep_dir} is not empty and holds no trainlab sweep: trainlab writes "
                            "only into new or empty folders; pick another hydra.sweep.dir=<folder>")
    record = {"task": [a for a in given if not _key(a).startswith("hydra")],
              "hydra": [a for a in given if _key(a).startswith("hydra")],
              "sweeper": sweeper, "sweep_dir": str(sweep_dir), "started": datetime.now().isoformat(timespec="seconds")}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(sweep_dir / RECORD, json.dumps(record, indent=2) + "\n")


def note(sweep_dir: Path, key: str, entry: dict) -> None:
    """Kept in sweep.json under `key`, the latest said: "launcher", what hydra/launcher=parallel chose (jobs at once
    and why; a resume says it again), and "search", a search's trials by state and its best trial."""
    path = sweep_dir / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # no trainlab record to add to (a sweep's folder is trainlab's only once it holds one)
    atomic_write_text(path, json.dumps({**record, key: entry}, indent=2) + "\n")


def _record(sweep_dir: Path) -> dict:
    """sweep.json, or for a sweep started before trainlab wrote one, the same read from Hydra's multirun.yaml."""
    try:
        if (sweep_dir / RECORD).is_file():
            return json.loads((sweep_dir / RECORD).read_text())
        hydra = (yaml.safe_load((sweep_dir / HYDRA_RECORD).read_text()) or {})["hydra"]
        return {"task": hydra["overrides"]["task"], "hydra": hydra["overrides"]["hydra"], "sweeper": hydra["sweeper"]}
    except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError) as e:
        raise TrainlabError(f"{sweep_dir} holds no readable sweep record ({e}): resume= needs the multirun "
                            "directory of a trainlab sweep") from None


def recorded(sweep_dir: Path) -> tuple[list[str], list[str]]:
    """The overrides the sweep was started with: (task overrides, hydra overrides), the command's own removed."""
    record = _record(sweep_dir)
    keep = lambda items: [o for o in items or [] if _key(o) not in _OWN]  # noqa: E731
    return keep(record.get("task")), keep(record.get("hydra"))


def resume_args(args: list[str], sweep_dir: Path, multirun_flags: set[str]) -> list[str]:
    """The command line that continues the sweep in `sweep_dir`: its recorded overrides (the ones given now must
    be the same, in any order), its directory, and `resume=` so that each job looks at its own directory."""
    task, hydra = recorded(sweep_dir)
    given = [a for a in args if a not in multirun_flags and _key(a) not in _OWN]
    given_task = [a for a in given if not _key(a).startswith("hydra")]
    given_hydra = [a for a in given if _key(a).startswith("hydra")]
    if given_task and sorted(given_task) != sorted(task):
        extra = sorted(set(given_task) - set(task))
        missing = sorted(set(task) - set(given_task))
        raise TrainlabError(
            f"the overrides differ from the sweep recorded in {sweep_dir / RECORD}"
            + (f" (new: {' '.join(extra)})" if extra else "") + (f" (left out: {' '.join(missing)})" if missing else "")
            + f": resume it with no overrides (trainlab train -m resume={sweep_dir}) or the same ones, or start a new "
            "sweep for the new settings")
    if given_hydra and sorted(given_hydra) != sorted(hydra):
        raise TrainlabError(f"the hydra.* overrides differ from the sweep recorded in {sweep_dir / RECORD} "
                            f"(recorded: {' '.join(hydra) or 'none'}): resume with the same ones, or none")
    search = _optuna_resume(sweep_dir)
    if search:
        hydra = [o for o in hydra if _key(o) not in ("hydra.sweeper.n_trials", "hydra.sweep.subdir")]
    return ["-m", *task, *hydra, *search, f"hydra.sweep.dir={sweep_dir}", f"resume={sweep_dir}"]


def _optuna_resume(sweep_dir: Path) -> list[str]:
    """An Optuna sweep continues its study from the storage: trials that finished count (they are not run
    again), a trial killed while running is marked failed and its parameters are tried first in a new job,
    only the remaining trials of `n_trials` run, and their job directories follow the existing ones."""
    sweeper = _record(sweep_dir).get("sweeper") or {}
    if "optuna" not in str(sweeper.get("_target_", "")):
        return []
    import optuna

    hydra = dict(o.split("=", 1) for o in recorded(sweep_dir)[1])  # the command line's settings win
    storage = hydra.get("hydra.sweeper.storage", sweeper.get("storage"))
    if storage and storage != "null":
        storage = storage.replace("${hydra.sweep.dir}", str(sweep_dir))
    else:
        raise TrainlabError(f"the Optuna sweep in {sweep_dir} kept its study in memory (hydra.sweeper.storage=null), "
                            "so it cannot continue: start it again with a storage (trainlab's default is "
                            "sqlite:///<sweep dir>/optuna.db)")
    name = hydra.get("hydra.sweeper.study_name", sweeper.get("study_name"))
    total = int(hydra.get("hydra.sweeper.n_trials", sweeper.get("n_trials")))
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except (KeyError, ValueError, RuntimeError) as e:  # optuna: no such study, or an unreadable storage
        raise TrainlabError(f"cannot open the Optuna study {name!r} in {storage}: {e}") from None
    state = optuna.trial.TrialState
    killed = [t for t in study.get_trials(deepcopy=False) if t.state == state.RUNNING]
    for trial in killed:  # no process runs it any more (this sweep's jobs are locked by the one resuming it)
        storage = study._storage  # optuna 2.x (what Hydra's sweeper allows) and 3+ name this differently
        if hasattr(storage, "set_trial_state_values"):
            storage.set_trial_state_values(trial._trial_id, state.FAIL)
        else:
            storage.set_trial_state(trial._trial_id, state.FAIL)
        with warnings.catch_warnings():  # "experimental" in optuna 2.x, the only line the sweeper allows
            warnings.simplefilter("ignore")
            study.enqueue_trial(trial.params)
    done = [t for t in study.get_trials(deepcopy=False) if t.state in (state.COMPLETE, state.PRUNED, state.FAIL)]
    left = max(total - (len(done) - len(killed)), 0)
    jobs = [int(p.name) for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    offset = max(jobs, default=-1) + 1
    log.info("the Optuna study %r has %d finished trial(s) of %d (%d interrupted, tried again first): %d to run, "
             "as jobs %d and on", name, len(done) - len(killed), total, len(killed), left, offset)
    subdir = f"${{trainlab.job_number:${{hydra.job.num}},{offset}}}"
    return [f"hydra.sweeper.n_trials={left}", f"hydra.sweep.subdir='{subdir}'"]


def job_number(num, offset) -> str:
    return str(int(num) + int(offset))


def job_state(job_dir: Path) -> str:
    """finished | interrupted (has a checkpoint to continue from) | failed (start again) | new."""
    from trainlab.record.checkpoint import run_checkpoint  # torch: not imported for `trainlab --help`
    from trainlab.record.run_dir import ERROR_TXT, SUMMARY_JSON, earlier_record, read_json

    try:
        stopped = read_json(job_dir, SUMMARY_JSON).get("stopped")
    except TrainlabError:  # a summary written only in part: the job did not finish
        stopped = None
    failed = (job_dir / ERROR_TXT).exists()
    if stopped in FINISHED and not failed:
        return "finished"
    if run_checkpoint(job_dir) is not None and not failed:
        return "interrupted"  # a signal (summary says so) or a kill (no summary): the newest checkpoint continues
    if failed or earlier_record(job_dir):
        return "failed"
    return "new"


def output_subdir(job_dir: str) -> str:
    """Hydra's files of a job: `.hydra/` the first time, `.hydra/resume-<time>/` when a resumed sweep comes back
    to it, so the record of how the job started stays as it was (a finished job's files stay byte-identical)."""
    if Path(job_dir, ".hydra", "config.yaml").is_file():
        return f".hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S}"
    return ".hydra"


def best_trial(sweep_dir: Path) -> dict | None:
    """An Optuna sweep's best trial: its job number, value, parameters and folder (the sweeper's
    optimization_results.yaml names the parameters and value; the job is the one started with them)."""
    from trainlab.record.run_dir import read_overrides, sweep_jobs

    results = Path(sweep_dir) / "optimization_results.yaml"
    try:
        best = yaml.safe_load(results.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    params, value = best.get("best_params") or {}, best.get("best_value")
    for job in sweep_jobs(Path(sweep_dir)):
        try:
            given = dict(o.lstrip("+").split("=", 1) for o in read_overrides(job) if "=" in o)
        except TrainlabError:
            continue
        if params and all(given.get(k) == str(v) for k, v in params.items()):
            return {"job": job.name, "value": value, "params": params, "folder": str(job)}
    return {"job": None, "value": value, "params": params, "folder": None} if params else None


def best_trial_line(sweep_dir: Path) -> str | None:
    best = best_trial(sweep_dir)
    if best is None:
        return None
    where = f"job {best['job']} in {best['folder']}" if best["folder"] else "its folder was not found"
    params = " ".join(f"{k}={v}" for k, v in best["params"].items())
    return f"best trial: {where}, value {best['value']}, {params}"


def _job_summary(job_dir: Path) -> dict:
    """A job's summary.json, or {} when it has none or only part of one (the job did not finish)."""
    from trainlab.record.run_dir import SUMMARY_JSON, read_json

    try:
        return read_json(job_dir, SUMMARY_JSON)
    except TrainlabError:
        return {}


def job_saved(job_dir: Path) -> str:
    """What a stopped job saved, from its summary.json: mid-epoch interrupted.ckpt, or last.ckpt when the signal
    came after the epoch's last batch (then the epoch was recorded whole)."""
    reason = _job_summary(job_dir).get("stop_reason") or ""
    return f"saved checkpoints/{Path(reason.rpartition('saved ')[2]).name}" if "saved " in reason else \
        "saved nothing new: it continues from its last checkpoint"


def job_outcome(job_dir: Path) -> str:
    """How a job that ran to its end ended: pruned (a search's pruner stopped it) or completed."""
    return "pruned" if _job_summary(job_dir).get("stopped") == "pruned" else "completed"


def job_ended(job_dir: Path) -> str:
    """`completed, best val/acc1 0.9851` (or `pruned at epoch 2, best ...`) from the job's summary.json."""
    summary = _job_summary(job_dir)
    monitor = summary.get("monitor")
    best = (summary.get("best") or {}).get(monitor)
    how = f"pruned at epoch {summary.get('epochs_run')}" if summary.get("stopped") == "pruned" else "completed"
    return how + (f", best {monitor} {best:.4f}" if isinstance(best, (int, float)) else "")


def first_line(path: Path) -> str:
    """The first line of a job's error.txt ('?' when it is empty or unreadable)."""
    try:
        return (path.read_text().strip() or "?").splitlines()[0]
    except OSError:
        return "?"
