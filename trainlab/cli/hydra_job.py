"""Running a Hydra command: `resume=` and torchrun pointed at the right run folder, the run folder claimed and
locked before Hydra writes into it, each Hydra job wrapped so a user error is one line (and in a sweep ends only its
job), and a sweep's failed jobs named at the end."""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from omegaconf import OmegaConf

from trainlab.cli.completion import shell_completion
from trainlab.cli.compose import (
    CONFIG_MODULE,
    MULTIRUN_FLAGS,
    as_override,
    config_path_args,
    hydra_flag,
    is_sweep,
    option,
    preflight,
    quoted,
)
from trainlab.cli.output import OWN_FULL_ERROR, debug, fail, log_to_files, one_line
from trainlab.cli.search import check as check_search
from trainlab.cli.search import trial_for_job
from trainlab.core.errors import ConfigError, Crashed, RunStopped, SweepFailed, TrainlabError
from trainlab.core.options import unquote
from trainlab.record import sweep
from trainlab.record.run_dir import default_folder
from trainlab.record.sweep import is_sweep_dir

# Resolved inside each job (also in a launcher's own process): where Hydra puts that job's files.
OmegaConf.register_new_resolver("trainlab.output_subdir", sweep.output_subdir, replace=True)
OmegaConf.register_new_resolver("trainlab.job_number", sweep.job_number, replace=True)
# The default run and sweep folders (conf/*.yaml's hydra.run.dir and hydra.sweep.dir), decided in record.run_dir.
OmegaConf.register_new_resolver("trainlab.outputs", default_folder, replace=True)

class CommandRun:
    """One `trainlab <command>` process (or one job process of a launcher): the command module its Hydra jobs run,
    the locks on the output folders it claimed (released when it ends) and the sweep jobs that failed (named
    together at the end). Hydra is handed its `job` method as the task function, so a launcher finds it there."""

    def __init__(self, module: str):
        self.module = module
        self.held: list = []
        self.failed: list[str] = []

    def job(self, cfg) -> object:
        return job(self, cfg)

    def release(self) -> None:
        while self.held:
            self.held.pop().release()



def resume_args(args: list[str]) -> list[str]:
    """`resume=...` continues a run in its own directory: point Hydra's output there, and keep this
    start's Hydra files in their own subfolder so the original .hydra/ stays as it was."""
    spec = option(args, "resume") or ""
    if spec and is_sweep_dir(spec):
        return sweep.resume_args(args, Path(spec).expanduser(), MULTIRUN_FLAGS) + [
            "hydra.output_subdir='${trainlab.output_subdir:${hydra.runtime.output_dir}}'"]
    if not spec or spec == "null" or any(a in MULTIRUN_FLAGS for a in args):
        return args
    from datetime import datetime

    from trainlab.core.config import config_groups
    from trainlab.record.checkpoint import find_checkpoint, load_checkpoint  # torch: only for a resume
    from trainlab.record.run_dir import OUTPUTS_ROOT, read_choices

    path = find_checkpoint(spec, OUTPUTS_ROOT)
    run_dir = path.parent.parent
    # The run's own record of its options; a checkpoint outside its run folder carries them too.
    choices = read_choices(run_dir)
    if choices is None:
        choices = load_checkpoint(path).get("choices", {})
    # Compose with the run's own group options, so that keys of its groups (model.width of a small_cnn run,
    # dataset.val_size of fake data) parse as they did when it started.
    given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    added = config_groups()[1]  # not in config.yaml's defaults: picked with `+`
    extra = [f"{'+' if group in added else ''}{group}={value}" for group, value in choices.items()
             if group not in given and "/" not in group and value is not None]
    extra.append(f"hydra.output_subdir=.hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S}")
    if not any(a.startswith("hydra.run.dir=") for a in args):
        extra.append(as_override("hydra.run.dir", run_dir))
    return args + extra

def torchrun_args(args: list[str]) -> list[str]:
    """Under torchrun every rank runs this command: all of them must write into one run directory, and only
    rank 0 may write Hydra's files and the log file (the others log warnings to the console)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return args
    if any(a in MULTIRUN_FLAGS for a in args):
        raise ConfigError("-m does not combine with torchrun: torchrun starts one run; start one torchrun per "
                          "configuration")
    if not any(a.startswith("hydra.run.dir=") for a in args):
        raise ConfigError("under torchrun every rank must write into the same run: pass hydra.run.dir=<a directory "
                          "every machine can reach>")
    if os.environ["RANK"] == "0":
        return args
    # logging's dictConfig opens every FileHandler it defines, used or not: without delay, rank 1 could create
    # train.log in the run directory before rank 0 claims it, and rank 0 would refuse a folder "not its own".
    return [a for a in args if not a.startswith("hydra.output_subdir=")] + [
        "hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
        "++hydra.job_logging.handlers.file.delay=true"]

def claim_output(command, args: list[str], cfg, training: bool, held: list) -> list[str]:
    """Lock this run's directory before Hydra writes anything into it, and refuse a folder that already
    holds a run (unless resume= or overwrite=true) or that is not trainlab's. A directory trainlab names
    itself gets a free neighbour (`_1`, ...) when two runs start in the same second. Returns the arguments
    with that directory made explicit, so Hydra uses exactly it; the lock goes into `held`."""
    from trainlab.core.fs import free_run_dir
    from trainlab.record.run_dir import claim_run_dir

    if is_sweep(args):  # each job claims its own directory when it starts
        sweep_dir = option(args, "hydra.sweep.dir")
        resuming = option(args, "resume") not in (None, "", "null")
        if sweep_dir and is_sweep_dir(sweep_dir) and option(args, "overwrite") != "true" and not resuming:
            raise TrainlabError(f"{sweep_dir} already holds a sweep: continue it with trainlab train -m "
                                f"resume={sweep_dir}, pick another hydra.sweep.dir=<folder>, or pass overwrite=true "
                                "to run every job again in it")
        if not sweep_dir and cfg is not None:  # named once here, so it is known (and printed) before the jobs run
            sweep_dir = free_run_dir(Path(OmegaConf.select(cfg, "hydra.sweep.dir")))
            args = args + [as_override("hydra.sweep.dir", sweep_dir)]
        if sweep_dir and not resuming:  # the record `resume=` replays; the folder also holds Optuna's study file
            sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False) if cfg is not None else None
            sweep.record_start(Path(sweep_dir), args, MULTIRUN_FLAGS, sweeper)
        return args
    if cfg is None:  # a Hydra flag (--cfg, --help, ...)
        return args
    if os.environ.get("RANK", "0") != "0":  # torchrun's other ranks write into rank 0's directory
        return args
    given = option(args, "hydra.run.dir")
    if given is None:
        default = _default_dir(command, args)
        folder = free_run_dir(default or Path(OmegaConf.select(cfg, "hydra.run.dir")))
        args = args + [as_override("hydra.run.dir", folder)]
    resumed = training and option(args, "resume") not in (None, "", "null")
    mode = "resume" if resumed else "overwrite" if cfg.get("overwrite") else "new"
    held.append(claim_run_dir(Path(given or folder), mode))  # held until the command ends
    return args

def _default_dir(command, args: list[str]) -> Path | None:
    """The command's own default run folder (evaluate: beside its checkpoint's run), if it has one."""
    if not hasattr(command, "default_dir"):
        return None
    values = {k: unquote(v) for k, v in (a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))}
    return command.default_dir(values)


def job(command: CommandRun, cfg) -> object:
    """Run one Hydra job of `command`; a user error ends this job with one line (and, in a sweep, lets the others
    run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from trainlab.core.fs import WRITE_ERRNOS, write_error
    from trainlab.engine.interrupt import requeue, requeue_signal

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            if _claim_job_dir(run_dir, cfg, command.held) == "finished":
                print(f"trainlab: job {run_dir.name} ({run_dir}) finished before: kept as it is", file=sys.stderr)
                from trainlab.record.run_dir import best_value

                return best_value(run_dir)
        try:
            run = importlib.import_module(command.module).run
            trial = trial_for_job(hydra_cfg) if hydra_cfg.mode == RunMode.MULTIRUN else None  # a search's trial
            return run(cfg, run_dir, list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices),
                       **({"trial": trial} if trial is not None else {}))
        except OSError as e:  # a full disk or a read-only folder met while writing the record
            if e.errno not in WRITE_ERRNOS or debug():
                raise
            raise write_error(Path(e.filename or run_dir), e, "free some disk space or check the folder's "
                              "permissions; what was written before (checkpoints included) is intact") from None
    except TrainlabError as e:
        if debug():
            raise
        log_to_files(f"error: {e}")
        if isinstance(e, RunStopped) and requeue_signal() and e.exit_code == 128 + requeue_signal():
            requeue(requeue_signal())  # submitit's own requeue: it exits this process
        if hydra_cfg.mode == RunMode.MULTIRUN and isinstance(e, RunStopped) and e.exit_code > 128:
            # A signal (Ctrl-C, a scheduler's SIGTERM) stops the whole sweep, not just this job; the job saved its
            # checkpoint, and the sweep continues where it stopped. The process ends here, inside Hydra's launcher
            # (which would record an exception as one failed job and go on): the one exit below cli.main.
            sweep_dir = Path(hydra_cfg.sweep.dir)
            fail(f"job {run_dir.name} {str(e).split('; continue with:')[0]}; the sweep stopped: continue it with "
                 "trainlab train -m "
                 f"resume={sweep_dir}", code=e.exit_code, prefix="")
        if hydra_cfg.mode == RunMode.MULTIRUN:
            print(f"trainlab: error: job {hydra_cfg.job.num} ({run_dir}): {e}", file=sys.stderr)
            (run_dir / "error.txt").write_text(str(e) + "\n")
            command.failed.append(str(run_dir))
            return None
        raise  # cli.main says it in one line

def _claim_job_dir(run_dir: Path, cfg, held: list) -> str:
    """A sweep's job directory (Hydra made it and wrote .hydra/ already): lock it, and refuse to train over
    an earlier job's record unless overwrite=true. In a resumed sweep, returns what the job's directory holds
    (sweep.job_state) and points `cfg.resume` at its checkpoint when it was interrupted."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    from trainlab.core.fs import FolderLock
    from trainlab.engine.interrupt import submitit_job
    from trainlab.record.checkpoint import run_checkpoint
    from trainlab.record.run_dir import earlier_record, holds_run, remove_run_entries

    ours = holds_run(run_dir)  # decided before the lock file is made in it
    lock = FolderLock(run_dir)
    if not lock.acquire():
        raise TrainlabError(f"{run_dir} is in use: {lock.holder()} of trainlab is writing into it")
    held.append(lock)
    log_name = f"{HydraConfig.get().job.name}.log"
    if cfg.get("resume") and is_sweep_dir(cfg.resume):
        state = sweep.job_state(run_dir)
        with read_write(cfg):
            cfg.resume = str(run_checkpoint(run_dir)) if state == "interrupted" else None
        if state == "failed" and ours:  # an error, or killed before its first checkpoint: start again
            remove_run_entries(run_dir, keep=(".hydra", log_name))
        if state != "finished":
            print(f"trainlab: job {run_dir.name} ({run_dir}): " + {
                "interrupted": f"continues from {cfg.resume}", "failed": "runs again",
                "new": "runs"}[state], file=sys.stderr)
        return state
    if submitit_job() and not cfg.get("resume") and sweep.job_state(run_dir) == "interrupted":
        # submitit requeued this job (its time limit, a preemption, a node failure): continue from its checkpoint
        with read_write(cfg):
            cfg.resume = str(run_checkpoint(run_dir))
        print(f"trainlab: job {run_dir.name} ({run_dir}) was requeued: continues from {cfg.resume}", file=sys.stderr)
        return "interrupted"
    earlier = earlier_record(run_dir)
    if not earlier or cfg.get("resume"):
        return "new"
    if not cfg.get("overwrite") or not ours:
        raise TrainlabError(f"{run_dir} already holds an earlier job's {', '.join(earlier)}: pick another "
                            "hydra.sweep.dir=<folder>" + (", or pass overwrite=true to replace it" if ours else ""))
    remove_run_entries(run_dir, keep=(".hydra", log_name))
    return "new"

def _find_own_plugins() -> None:
    """Let Hydra's plugin scan find hydra_plugins/trainlab_launcher (hydra/launcher=parallel) in a source checkout:
    pip's editable install maps trainlab's packages with an import hook, which leaves the `hydra_plugins`
    namespace's path (what Hydra walks) without it. A wheel puts it in site-packages, where it is found anyway."""
    try:
        import hydra_plugins
    except ImportError:
        return
    here = Path(__file__).resolve().parents[2] / "hydra_plugins"
    if (here / "trainlab_launcher").is_dir() and str(here) not in list(hydra_plugins.__path__):
        hydra_plugins.__path__.append(str(here))


def run_hydra(name: str, args: list[str], commands) -> None:
    """`trainlab <name> <args>` for a command that takes a Hydra config (commands[name].config, its primary config).
    Its module has check (before anything is written), run (the job) and, optionally, default_dir (its run folder's
    default); it imports torch, so Hydra's own flags (-sc for a shell's completion, --help, --cfg) answer without
    importing it: a Tab press takes a second, not ten."""
    import hydra

    shell_completion(name, args, commands)
    args = [quoted(a) for a in args]
    _find_own_plugins()
    module, config = f"trainlab.commands.{commands[name].module}", commands[name].config
    command = None if hydra_flag(args) else importlib.import_module(module)
    training = name == "train"
    if training:
        args = resume_args(args)
    if any(a.split("=", 1)[0] in ("-cp", "--config-path") for a in args):
        from trainlab.core.config import register_schemas

        register_schemas()  # a primary config of the user's own composes with trainlab's typed keys too
    cfg = preflight(args, config, getattr(command, "check", None), check_search)
    if training:
        args = torchrun_args(args)
    this = CommandRun(module)
    try:
        args = claim_output(command, config_path_args(args), cfg, training, this.held)
        sys.argv = [f"trainlab {name}"] + args
        task = hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=config, version_base="1.3")(this.job)
        given = option(args, "hydra.sweep.dir") if is_sweep(args) else None
        sweep_dir = Path(given).expanduser() if given else None  # unnamed: only the jobs of this process count
        before = _job_errors(sweep_dir)
        _run_task(task)
    finally:
        this.release()
    # A launcher that runs the jobs in other processes (submitit: SLURM or local) only returns their results;
    # what failed is the error.txt each failed job wrote, the new ones since the sweep started.
    elsewhere = sorted(set(_job_errors(sweep_dir).items()) - set(before.items()))
    seen = {Path(f).resolve() for f in this.failed}  # those the jobs run in this process reported
    for error_txt, _ in elsewhere:
        if error_txt.parent.resolve() not in seen:
            reason = (error_txt.read_text().strip() or "?").splitlines()[0]
            print(f"trainlab: error: job {error_txt.parent.name} ({error_txt.parent}): {reason}", file=sys.stderr)
            this.failed.append(str(error_txt.parent))
    best = sweep.best_trial_line(sweep_dir) if sweep_dir is not None else None
    if best:  # an Optuna search: which folder holds the trial it found best
        print(f"trainlab: {best}", file=sys.stderr)
    if this.failed:
        raise SweepFailed(f"{len(this.failed)} job(s) of the sweep failed: {', '.join(this.failed)}")


def _run_task(task: Callable) -> None:
    """Hydra's own writes before the job (.hydra/config.yaml, ...) failing on a full disk are one line too: Hydra
    would print them as a traceback, so it is asked to pass its exceptions on (HYDRA_FULL_ERROR, for this call)."""
    from trainlab.core.fs import WRITE_ERRNOS, write_error

    own = "HYDRA_FULL_ERROR" not in os.environ
    if own:
        os.environ["HYDRA_FULL_ERROR"], os.environ[OWN_FULL_ERROR] = "1", "1"
    try:
        task()
    except TrainlabError:  # a job's (one run), or a launcher's own setting: cli.main says it
        raise
    except Exception as e:  # what Hydra would have printed (a bug, or a Hydra error the preflight missed)
        if isinstance(e, OSError) and e.errno in WRITE_ERRNOS and not debug():
            raise write_error(Path(e.filename or "?"), e) from None
        if debug():  # the whole traceback, as Hydra prints it with HYDRA_FULL_ERROR=1
            traceback.print_exc()
            sys.exit(1)
        raise Crashed(one_line(f"{type(e).__name__}: {e}")) from None
    finally:
        if own:
            os.environ.pop("HYDRA_FULL_ERROR", None)
            os.environ.pop(OWN_FULL_ERROR, None)


def _job_errors(sweep_dir: Path | None) -> dict[Path, int]:
    """The error.txt files of a sweep's jobs with their modification times (the file server's clock, compared only
    with itself)."""
    if sweep_dir is None or not sweep_dir.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/error.txt")}
