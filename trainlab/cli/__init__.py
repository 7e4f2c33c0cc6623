"""The `trainlab` command: dispatches to a subcommand; Hydra parses the rest of the command line.

User errors (bad config, data, paths) print one line on stderr and exit with status 2; set
TRAINLAB_DEBUG=1 (or HYDRA_FULL_ERROR=1) to see the traceback instead.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

import trainlab
from trainlab.core.errors import RunStopped, TrainlabError
from trainlab.record import sweep
from trainlab.record.sweep import is_sweep_dir

CONFIG_MODULE = "trainlab.conf"
COMMANDS = {
    "train": "train a model from composed configs: `trainlab train +experiment=quickstart`",
    "evaluate": "metrics, predictions.csv and confusion.csv of a checkpoint: `trainlab evaluate ckpt=<file|run_dir>`",
    "predict": "top-k classes of new, unlabelled images: `trainlab predict ckpt=<file|run_dir> input=<folder>`",
    "export": "the model for other programs (safetensors, torchscript, onnx): `trainlab export ckpt=... format=...`",
    "compare": "the images two checkpoints judge differently: `trainlab compare <A> <B> [n=10]`",
    "visualize": "feature maps and activation statistics of one image: `trainlab visualize ckpt=... image=0`",
    "summary": "every layer with its output shape and parameters: `trainlab summary +experiment=resnet18_tiny`",
    "lr-find": "the learning-rate range test, a curve and a suggested optimizer.lr: `trainlab lr-find +experiment=...`",
    "diagnose": "what the curves of a run say (over-fitting, plateau, ...): `trainlab diagnose <run_dir>`",
    "report": "report.html + report.md of a run or a sweep: `trainlab report <run_dir | multirun_dir>`",
    "runs": "every run and sweep job in one table (status, metrics, speed): `trainlab runs [dir ...] [--sort ...]`",
}
COMPARE_USAGE = """usage: trainlab compare <A> <B> [n=10] [out=DIR]

A and B: evaluation directories (from `trainlab evaluate`), checkpoints or run directories (evaluated on
val first). Writes disagreements.csv, per_class.csv, compare.json and disagreements.png (n images).
"""
USAGE = f"""usage: trainlab <command> [overrides ...]

A command-line experiment runner for PyTorch image classification (trainlab {trainlab.__version__}).

commands:
{chr(10).join(f"  {name:<10} {text}" for name, text in COMMANDS.items())}

`trainlab <command> --help` shows that command's config groups and Hydra's flags
(-m/--multirun, --cfg job, hydra.run.dir=...). Set TRAINLAB_DEBUG=1 to see tracebacks.
"""
# Hydra flags after which composing the config ourselves first would be wrong or pointless.
_HYDRA_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--package", "-p",
                "--shell-completion", "-sc",
                "--experimental-rerun", "--version"}
_MULTIRUN_FLAGS = {"-m", "--multirun"}

# Resolved inside each job (also in a launcher's own process): where Hydra puts that job's files.
OmegaConf.register_new_resolver("trainlab.output_subdir", sweep.output_subdir, replace=True)
OmegaConf.register_new_resolver("trainlab.job_number", sweep.job_number, replace=True)

_failed_jobs: list[str] = []
_held: list = []  # the locks on this command's output directories, released when it ends


def _debug() -> bool:
    return os.environ.get("TRAINLAB_DEBUG", "") not in ("", "0") or os.environ.get("HYDRA_FULL_ERROR") == "1"


def fail(message: str, code: int = 2, prefix: str = "error: ") -> None:
    print(f"trainlab: {prefix}{message}", file=sys.stderr)
    sys.exit(code)


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines()]
    keep = [ln for ln in lines if ln and not ln.startswith(("full_key:", "object_type", "reference_type"))]
    return " ".join(keep)


def _log_to_files(message: str) -> None:
    """Put the error into the run's log file too, without printing it a second time on the console."""
    record = logging.LogRecord("trainlab", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@dataclass
class Configs:
    """Where a command's config is composed from: the primary folder (trainlab's own, or a user's `-cp DIR`) with
    the primary config `name` (the command's, or `-cn NAME`), and the folders searched after it (`-cd DIR`,
    `hydra.searchpath=[...]`), all as Hydra's searchpath entries (pkg://module, file:///abs/dir)."""
    primary: str
    name: str
    roots: list[str] = field(default_factory=list)

    def initialize(self):
        from hydra import initialize_config_dir, initialize_config_module

        if self.primary.startswith("pkg://"):
            return initialize_config_module(self.primary[len("pkg://"):], version_base="1.3")
        return initialize_config_dir(self.primary[len("file://"):], version_base="1.3")

    def searchpath(self) -> list[str]:
        return [f"hydra.searchpath=[{','.join(self.roots)}]"] if self.roots else []

    def folders(self) -> list:
        """The primary folder, then the searchpath's (file:// folders and pkg:// packages that exist)."""
        from importlib.resources import files

        folders = []
        for root in [self.primary, *self.roots]:
            try:
                folder = Path(root[len("file://"):]) if root.startswith("file://") else \
                    files(root[len("pkg://"):]) if root.startswith("pkg://") else Path(root)
            except (ModuleNotFoundError, TypeError):
                continue
            if folder.is_dir():
                folders.append(folder)
        return folders

    def group_options(self, group: str) -> list[str] | None:
        """The options of a config group in all the folders; None where no folder has it."""
        folders = [f.joinpath(group) for f in self.folders() if f.joinpath(group).is_dir()]
        if not folders:
            return None
        return sorted({p.name[:-5] for folder in folders for p in folder.iterdir() if p.name.endswith(".yaml")})

    def groups(self) -> list[str]:
        return sorted({p.name for folder in self.folders() for p in folder.iterdir()
                       if p.is_dir() and not p.name.startswith(("_", "."))})


_VALUE_FLAGS = {"-cd": "--config-dir", "-cp": "--config-path", "-cn": "--config-name"}


def _flag_values(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the arguments without Hydra's -cd/-cp/-cn and their values, {long flag: value})."""
    rest, found, items = [], {}, iter(args)
    for arg in items:
        flag = arg.split("=", 1)[0]
        long = _VALUE_FLAGS.get(flag, flag)
        if long in _VALUE_FLAGS.values():
            value = arg.split("=", 1)[1] if "=" in arg else next(items, "")
            found[long] = value  # argparse's rule: the last one counts
            continue
        rest.append(arg)
    return rest, found


def config_path_arg(value: str) -> str:
    """`-cp DIR` as Hydra must be given it. Hydra takes a relative -cp from the folder of the Python file that
    declares the app (inside site-packages for trainlab), which no user means: here it is the current folder's."""
    if value.startswith(("pkg://", "file://")) or os.path.isabs(value):
        return value
    return str(Path(value).expanduser().resolve())


def _config_path_args(args: list[str]) -> list[str]:
    """The arguments with a relative `-cp DIR` made absolute (see config_path_arg)."""
    out, items = [], iter(args)
    for arg in items:
        flag = arg.split("=", 1)[0]
        if flag in ("-cp", "--config-path"):
            value = arg.split("=", 1)[1] if "=" in arg else next(items, "")
            out += [flag, config_path_arg(value)]
            continue
        out.append(arg)
    return out


def config_source(args: list[str], config_name: str) -> tuple[list[str], Configs]:
    """(the arguments without -cd/-cp/-cn, where the config comes from)."""
    rest, found = _flag_values(args)
    for flag, value in found.items():
        if not value or value.startswith("-"):
            raise TrainlabError(f"{flag} needs a value: {flag} {'NAME' if flag == '--config-name' else 'DIR'}")
    if found.get("--config-dir") and not Path(found["--config-dir"]).expanduser().is_dir():
        raise TrainlabError(f"-cd {found['--config-dir']}: no such folder; -cd names a folder of config groups and "
                            "experiments of your own, searched after trainlab's")
    roots = [f"file://{Path(found['--config-dir']).expanduser().resolve()}"] if found.get("--config-dir") else []
    for arg in rest:
        if arg.startswith("hydra.searchpath="):
            value = _unquote(arg.split("=", 1)[1]).strip().strip("[]")
            roots += [_unquote(v.strip()) for v in value.split(",") if v.strip()]
    primary, name = f"pkg://{CONFIG_MODULE}", found.get("--config-name") or config_name
    if found.get("--config-path"):
        path = config_path_arg(found["--config-path"])
        primary = path if path.startswith(("pkg://", "file://")) else f"file://{path}"
        if primary.startswith("file://") and not Path(primary[len("file://"):], f"{name}.yaml").is_file():
            raise TrainlabError(f"-cp {found['--config-path']}: {primary[len('file://'):]} holds no {name}.yaml; -cp "
                                "names the folder of your own primary config (a relative one is taken from the "
                                "current folder); to add groups or experiments to trainlab's configs use -cd DIR")
    return rest, Configs(primary, name, roots)


def _check_group_choices(overrides: list[str], configs: Configs) -> bool:
    """`optimizer=foo` (or a sweep over several options) names an option that does not exist in trainlab's
    configs or the searchpath's. Returns whether any override is a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from trainlab.core.suggest import did_you_mean

    parsed = OverridesParser.create().parse_overrides(overrides)
    for override in parsed:
        group = override.key_or_group
        options = None if override.package or override.is_delete() else configs.group_options(group)
        if options is None:
            continue
        value = None if override.is_sweep_override() else override.value()
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() \
            else [str(v) for v in value] if isinstance(value, list) else [override.get_value_element_as_str()]
        for value in values:
            if value not in options:
                raise TrainlabError(f"unknown {group} '{value}'" + _choose(did_you_mean(value, options), options))
    return any(o.is_sweep_override() for o in parsed)


def _choose(hint: str, options) -> str:
    return f"{hint} (the options: {', '.join(options)})" if hint else f": choose one of {', '.join(options)}"


def preflight(args: list[str], config_name: str, check: Callable | None):
    """Compose the config once before Hydra starts the job, so a config mistake is one line on stderr
    and no run directory is created for it. Returns the composed config (with Hydra's node, to find the
    run directory), or None for a sweep or a Hydra flag (--cfg, --help, -cd, ...)."""
    from hydra import compose
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if any(a.split("=")[0] in _HYDRA_FLAGS for a in args):
        return None
    try:  # a user's own config folders: their options and experiments count too
        args, configs = config_source(args, config_name)
    except TrainlabError as e:
        fail(str(e))
    overrides = [a for a in args
                 if not a.startswith("-") and not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    # Hydra's own groups (hydra/launcher=submitit_slurm) are composed too: a plugin that is missing is one line.
    plugins = [a for a in args if a.startswith("hydra/") and "=" in a]
    try:
        swept = _check_group_choices(overrides, configs)
        if is_sweep(args) or swept:
            # A sweep: its keys are checked here with its first job's values (a misspelt key fails once, not in every
            # job), and its fixed settings (data, components) without the swept ones; each job checks its own values
            # as it starts, so one bad value of a search space fails only its job.
            first = _first_job(overrides)
            if first is None:  # a search space only the sweeper reads (interval(...)): the jobs check it
                return None
            with configs.initialize():
                compose(configs.name, overrides=first + configs.searchpath())
            overrides = [o for o, f in zip(overrides, first) if o == f]
        with configs.initialize():
            cfg = compose(configs.name, overrides=overrides + plugins + configs.searchpath(), return_hydra_config=True)
        if check is not None:
            check(cfg, overrides)
        return cfg
    except TrainlabError as e:
        fail(str(e))
    except OverrideParseException as e:
        bad = next((a for a in overrides if _unparsable(a)), "")
        fail(f"cannot read the override {bad!r}: put values with spaces or non-ASCII characters in quotes, e.g. "
             f"'dataset.root=\"/my data/photos\"' (the single quotes keep the shell from eating the double ones)"
             if bad else _one_line(str(e)))
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        plugin = re.search(r"Could not find 'hydra/(sweeper|launcher)/(\w+)'", str(e))
        if plugin:  # a Hydra plugin that is not installed: the package that brings it
            kind, name = plugin.groups()
            package = "'trainlab[optuna]'" if name == "optuna" else "'trainlab[slurm]'" if "submitit" in name \
                else f"hydra-{name.split('_')[0]}-{kind}"
            fail(f"the Hydra {kind} '{name}' is not installed: pip install {package}")
        misspelt = re.match(r"Could not override '([^']+)'", str(e))
        if misspelt and "not in" in str(e.__cause__ or e):
            fail(_unknown_key(overrides, misspelt.group(1), configs))
        cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else None
        # "Error merging override trainer.epochs=abc" alone does not say what is wrong; the cause does.
        fail(_one_line(f"{e}: {str(cause).splitlines()[0]}" if cause else str(e)))


def is_sweep(args: list[str]) -> bool:
    """-m, a sweeper preset (+hparams_search=...) or hydra.mode=MULTIRUN: Hydra runs a sweep of jobs."""
    return any(a in _MULTIRUN_FLAGS or a.lstrip("+").startswith("hparams_search=") or a == "hydra.mode=MULTIRUN"
               for a in args)


def _first_job(overrides: list[str]) -> list[str] | None:
    """The overrides of a sweep's first job (each swept key at its first value), or None when a swept value is a
    search space only the sweeper can sample."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    first = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if not override.is_sweep_override():
            first.append(override.input_line)
            continue
        try:
            value = next(iter(override.sweep_string_iterator()))
        except (HydraException, StopIteration, TypeError, ValueError):
            return None
        first.append(_override(override.get_key_element(), value))
    return first


def _unknown_key(overrides: list[str], key: str, configs: Configs) -> str:
    """'unknown key ...; did you mean ...?' against the config these overrides' groups compose (their own keys:
    optimizer=adam has betas), without the overrides of single keys."""
    from hydra import compose

    from trainlab.core.suggest import unknown_key

    groups = configs.groups()
    picks = [o for o in overrides if o.split("=")[0].lstrip("+~") in groups]
    with configs.initialize():
        base = compose(configs.name, overrides=picks + configs.searchpath())
    return unknown_key(base, key, groups)


def _unparsable(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        OverridesParser.create().parse_overrides([override])
    except OverrideParseException:
        return True
    return False


def _override(key: str, value) -> str:
    """`key=value` that Hydra parses back to exactly `value` (a path with spaces or non-ASCII letters is quoted)."""
    plain = f"{key}={value}"
    return plain if not _unparsable(plain) else f"{key}='{value}'"


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" else value


_ADDED_GROUPS = ("experiment", "debug", "hparams_search")  # not in config.yaml's defaults: picked with `+`


def resume_args(args: list[str]) -> list[str]:
    """`resume=...` continues a run in its own directory: point Hydra's output there, and keep this
    start's Hydra files in their own subfolder so the original .hydra/ stays as it was."""
    from datetime import datetime

    from trainlab.record.checkpoint import OUTPUTS_ROOT, find_checkpoint, load_checkpoint

    spec = _option(args, "resume") or ""
    if spec and is_sweep_dir(spec):
        try:
            return sweep.resume_args(args, Path(spec).expanduser(), _MULTIRUN_FLAGS) + [
                "hydra.output_subdir='${trainlab.output_subdir:${hydra.runtime.output_dir}}'"]
        except TrainlabError as e:
            fail(str(e))
    if not spec or spec == "null" or any(a in _MULTIRUN_FLAGS for a in args):
        return args
    try:
        path = find_checkpoint(spec, OUTPUTS_ROOT)
        choices = load_checkpoint(path).get("choices", {})
    except TrainlabError as e:
        fail(str(e))
    run_dir = path.parent.parent
    # Compose with the run's own group options, so that keys of its groups (model.width of a small_cnn run,
    # dataset.val_size of fake data) parse as they did when it started.
    given = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    extra = [f"{'+' if group in _ADDED_GROUPS else ''}{group}={value}" for group, value in choices.items()
             if group not in given and "/" not in group and value is not None]
    extra.append(f"hydra.output_subdir=.hydra/resume-{datetime.now():%Y-%m-%d_%H-%M-%S}")
    if not any(a.startswith("hydra.run.dir=") for a in args):
        extra.append(_override("hydra.run.dir", run_dir))
    return args + extra


def torchrun_args(args: list[str]) -> list[str]:
    """Under torchrun every rank runs this command: all of them must write into one run directory, and only
    rank 0 may write Hydra's files and the log file (the others log warnings to the console)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return args
    if any(a in _MULTIRUN_FLAGS for a in args):
        fail("-m does not combine with torchrun: torchrun starts one run; start one torchrun per configuration")
    if not any(a.startswith("hydra.run.dir=") for a in args):
        fail("under torchrun every rank must write into the same run: pass hydra.run.dir=<a directory every "
             "machine can reach>")
    if os.environ["RANK"] == "0":
        return args
    # logging's dictConfig opens every FileHandler it defines, used or not: without delay, rank 1 could create
    # train.log in the run directory before rank 0 claims it, and rank 0 would refuse a folder "not its own".
    return [a for a in args if not a.startswith("hydra.output_subdir=")] + [
        "hydra.output_subdir=null", "hydra.job_logging.root.handlers=[console]",
        "++hydra.job_logging.handlers.file.delay=true"]


def _default_eval_dir(args: list[str]) -> Path | None:
    """Where an evaluation goes without hydra.run.dir: beside its checkpoint's run (<run_dir>/eval/...)."""
    from trainlab.commands.evaluate import checkpoint_path, default_eval_dir

    values = {k: _unquote(v) for k, v in (a.split("=", 1) for a in args if "=" in a and not a.startswith("-"))}
    if "ckpt" not in values:
        return None
    try:
        ckpt = checkpoint_path(values["ckpt"])
    except TrainlabError as e:
        fail(str(e))
    return default_eval_dir(ckpt, values.get("split", "val"))


def _option(args: list[str], key: str) -> str | None:
    return next((_unquote(a.split("=", 1)[1]) for a in reversed(args) if a.startswith(f"{key}=")), None)


def claim_output(command: str, args: list[str], cfg) -> list[str]:
    """Lock this run's directory before Hydra writes anything into it, and refuse a folder that already
    holds a run (unless resume= or overwrite=true) or that is not trainlab's. A directory trainlab names
    itself gets a free neighbour (`_1`, ...) when two runs start in the same second. Returns the arguments
    with that directory made explicit, so Hydra uses exactly it."""
    from trainlab.core.fs import claim_run_dir, free_run_dir

    if is_sweep(args):  # each job claims its own directory when it starts
        sweep_dir = _option(args, "hydra.sweep.dir")
        resuming = _option(args, "resume") not in (None, "", "null")
        if sweep_dir and is_sweep_dir(sweep_dir) and _option(args, "overwrite") != "true" and not resuming:
            fail(f"{sweep_dir} already holds a sweep: continue it with trainlab train -m resume={sweep_dir}, pick "
                 "another hydra.sweep.dir=<folder>, or pass overwrite=true to run every job again in it")
        if not sweep_dir and cfg is not None:  # named once here, so it is known (and printed) before the jobs run
            sweep_dir = free_run_dir(Path(OmegaConf.select(cfg, "hydra.sweep.dir")))
            args = args + [_override("hydra.sweep.dir", sweep_dir)]
        if sweep_dir and not resuming:  # the record `resume=` replays; the folder also holds Optuna's study file
            sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=False) if cfg is not None else None
            try:
                sweep.record_start(Path(sweep_dir), args, _MULTIRUN_FLAGS, sweeper)
            except TrainlabError as e:
                fail(str(e))
        return args
    if cfg is None:  # a Hydra flag (--cfg, --help, ...)
        return args
    if os.environ.get("RANK", "0") != "0":  # torchrun's other ranks write into rank 0's directory
        return args
    given = _option(args, "hydra.run.dir")
    if given is None:
        default = _default_eval_dir(args) if command == "evaluate" else None
        folder = free_run_dir(default or Path(OmegaConf.select(cfg, "hydra.run.dir")))
        args = args + [_override("hydra.run.dir", folder)]
    resumed = command == "train" and _option(args, "resume") not in (None, "", "null")
    mode = "resume" if resumed else "overwrite" if cfg.get("overwrite") else "new"
    try:
        _held.append(claim_run_dir(Path(given or folder), mode))  # held until the command ends
    except TrainlabError as e:
        fail(str(e))
    return args


def _job(run: Callable, cfg) -> object:
    """Run one Hydra job; a user error ends this job with one line (and, in a sweep, lets the others run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from trainlab.core.fs import WRITE_ERRNOS, write_error
    from trainlab.engine.interrupt import requeue, requeue_signal

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            if _claim_job_dir(run_dir, cfg) == "finished":
                print(f"trainlab: job {run_dir.name} ({run_dir}) finished before: kept as it is", file=sys.stderr)
                return best_value(run_dir)
        try:
            return run(cfg, run_dir, list(hydra_cfg.overrides.task), dict(hydra_cfg.runtime.choices))
        except OSError as e:  # a full disk or a read-only folder met while writing the record
            if e.errno not in WRITE_ERRNOS or _debug():
                raise
            raise write_error(Path(e.filename or run_dir), e, "free some disk space or check the folder's "
                              "permissions; what was written before (checkpoints included) is intact") from None
    except TrainlabError as e:
        if _debug():
            raise
        _log_to_files(f"error: {e}")
        if isinstance(e, RunStopped) and requeue_signal() and e.exit_code == 128 + requeue_signal():
            requeue(requeue_signal())  # submitit's own requeue: it exits this process
        if hydra_cfg.mode == RunMode.MULTIRUN and isinstance(e, RunStopped) and e.exit_code > 128:
            # A signal (Ctrl-C, a scheduler's SIGTERM) stops the whole sweep, not just this job; the job saved its
            # checkpoint, and the sweep continues where it stopped.
            sweep_dir = Path(hydra_cfg.sweep.dir)
            fail(f"job {run_dir.name} {str(e).split('; continue with:')[0]}; the sweep stopped: continue it with "
                 "trainlab train -m "
                 f"resume={sweep_dir}", code=e.exit_code, prefix="")
        if hydra_cfg.mode == RunMode.MULTIRUN:
            print(f"trainlab: error: job {hydra_cfg.job.num} ({run_dir}): {e}", file=sys.stderr)
            (run_dir / "error.txt").write_text(str(e) + "\n")
            _failed_jobs.append(str(run_dir))
            return None
        fail(str(e), code=e.exit_code, prefix="" if isinstance(e, RunStopped) else "error: ")


def _claim_job_dir(run_dir: Path, cfg) -> str:
    """A sweep's job directory (Hydra made it and wrote .hydra/ already): lock it, and refuse to train over
    an earlier job's record unless overwrite=true. In a resumed sweep, returns what the job's directory holds
    (sweep.job_state) and points `cfg.resume` at its checkpoint when it was interrupted."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import read_write

    from trainlab.core.fs import FolderLock, holds_run, remove_run_entries
    from trainlab.engine.interrupt import submitit_job
    from trainlab.record.checkpoint import run_checkpoint

    ours = holds_run(run_dir)  # decided before the lock file is made in it
    lock = FolderLock(run_dir)
    if not lock.acquire():
        raise TrainlabError(f"{run_dir} is in use: {lock.holder()} of trainlab is writing into it")
    _held.append(lock)
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
    earlier = [n for n in ("run.json", "checkpoints", "metrics.csv", "metrics.json") if (run_dir / n).exists()]
    if not earlier or cfg.get("resume"):
        return "new"
    if not cfg.get("overwrite") or not ours:
        raise TrainlabError(f"{run_dir} already holds an earlier job's {', '.join(earlier)}: pick another "
                            "hydra.sweep.dir=<folder>" + (", or pass overwrite=true to replace it" if ours else ""))
    remove_run_entries(run_dir, keep=(".hydra", log_name))
    return "new"


BASH_COMPLETION = """# trainlab's bash completion: eval "$(trainlab train -sc install=bash)" (in ~/.bashrc to keep it)
_trainlab_completion()
{
    local cur="${COMP_WORDS[COMP_CWORD]}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W "COMMANDS" -- "$cur"))
        return
    fi
    case "${COMP_WORDS[1]}" in
        HYDRA_COMMANDS)
            local choices
            choices=$(COMP_POINT=$COMP_POINT COMP_LINE="$COMP_LINE" trainlab "${COMP_WORDS[1]}" -sc query=bash \
                      2>/dev/null)
            COMPREPLY=($(compgen -o nospace -o default -W "$choices" -- "$cur"))
            ;;
        *)
            COMPREPLY=($(compgen -o default -- "$cur"))
            ;;
    esac
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _trainlab_completion trainlab
"""
HYDRA_COMMANDS = ("train", "evaluate", "summary", "lr-find")


def shell_completion(command: str, args: list[str]) -> None:
    """`-sc install=bash` prints trainlab's completer (Hydra's would call `trainlab -sc query=bash`, which is no
    command); `-sc query=bash` is that completer's question about one command: Hydra answers it once the command
    word is taken out of the line, so it sees the overrides only."""
    flag = next((i for i, a in enumerate(args) if a in ("-sc", "--shell-completion")), None)
    if flag is None or flag + 1 >= len(args):
        return
    action = args[flag + 1]
    if action.startswith("install="):
        if action != "install=bash":
            fail(f"{action}: trainlab installs bash completion (zsh: autoload bashcompinit && bashcompinit, then the "
                 "same line)")
        print(BASH_COMPLETION.replace('"COMMANDS"', f'"{" ".join(COMMANDS)}"')
              .replace("HYDRA_COMMANDS)", "|".join(HYDRA_COMMANDS) + ")"), end="")
        sys.exit(0)
    if action.startswith("uninstall="):
        print("complete -r trainlab 2> /dev/null")
        sys.exit(0)
    if action.startswith("query=") and "COMP_LINE" in os.environ:
        words = os.environ["COMP_LINE"].split(" ", 2)
        if len(words) >= 2 and words[1] == command:
            os.environ["COMP_LINE"] = " ".join([words[0]] + words[2:]) if len(words) > 2 else words[0] + " "


def run_hydra(command: str, args: list[str], run: Callable, config_name: str = "config",
              check: Callable | None = None) -> None:
    import hydra

    shell_completion(command, args)

    if command == "train":
        args = resume_args(args)
    if any(a.split("=", 1)[0] in ("-cp", "--config-path") for a in args):
        from trainlab.core.config import register_schemas

        register_schemas()  # a primary config of the user's own composes with trainlab's typed keys too
    cfg = preflight(args, config_name, check)
    if command == "train":
        args = torchrun_args(args)
    args = claim_output(command, _config_path_args(args), cfg)
    sys.argv = [f"trainlab {command}"] + args

    @hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name=config_name, version_base="1.3")
    def task(cfg):
        return _job(run, cfg)

    given = _option(args, "hydra.sweep.dir") if is_sweep(args) else None
    sweep_dir = Path(given).expanduser() if given else None  # unnamed: only the jobs of this process count
    before = _job_errors(sweep_dir)
    try:
        task()
    finally:
        while _held:
            _held.pop().release()
    # A launcher that runs the jobs in other processes (submitit: SLURM or local) only returns their results;
    # what failed is the error.txt each failed job wrote, the new ones since the sweep started.
    elsewhere = sorted(set(_job_errors(sweep_dir).items()) - set(before.items()))
    seen = {Path(f).resolve() for f in _failed_jobs}  # those the jobs run in this process reported
    for job, _ in elsewhere:
        if job.parent.resolve() not in seen:
            reason = (job.read_text().strip() or "?").splitlines()[0]
            print(f"trainlab: error: job {job.parent.name} ({job.parent}): {reason}", file=sys.stderr)
            _failed_jobs.append(str(job.parent))
    if _failed_jobs:
        failed = list(_failed_jobs)
        _failed_jobs.clear()
        fail(f"{len(failed)} job(s) of the sweep failed: {', '.join(failed)}", code=1)


def _job_errors(sweep_dir: Path | None) -> dict[Path, int]:
    """The error.txt files of a sweep's jobs with their modification times (the file server's clock, compared only
    with itself)."""
    if sweep_dir is None or not sweep_dir.is_dir():
        return {}
    return {p: p.stat().st_mtime_ns for p in sweep_dir.glob("*/error.txt")}


def _train(cfg, run_dir: Path, overrides: list[str], choices: dict) -> float | None:
    """Returns the best value of checkpoint.monitor: what a sweeper (Optuna) optimises."""
    from trainlab.commands.train import train_command

    train_command(cfg, run_dir, overrides, choices)
    return best_value(run_dir)


def best_value(run_dir: Path) -> float | None:
    import json

    summary = run_dir / "summary.json"
    record = json.loads(summary.read_text()) if summary.is_file() else {}
    return (record.get("best") or {}).get(record.get("monitor"))


def _check_train(cfg, overrides: list[str]) -> None:
    from trainlab.core.config import load_settings
    from trainlab.core.runtime import check_hardware
    from trainlab.data import check_root
    from trainlab.engine.build import check_components

    if cfg.get("resume") and not is_sweep_dir(cfg.resume):  # the stored config with these overrides: refused here,
        # before the run's files are opened
        from trainlab.record.checkpoint import OUTPUTS_ROOT, find_checkpoint
        from trainlab.record.stored_run import stored_run

        stored_run(find_checkpoint(str(cfg.resume), OUTPUTS_ROOT), overrides, ("resume",))
        return
    settings = load_settings(cfg)
    check_hardware(settings.device.type, settings.trainer.precision)
    check_components(cfg, settings)
    check_root(cfg.dataset)


def _evaluate(cfg, run_dir: Path, overrides: list[str], choices: dict):
    from trainlab.commands.evaluate import evaluate

    return evaluate(cfg, run_dir, overrides)


def _check_evaluate(cfg, overrides: list[str]) -> None:
    from omegaconf import OmegaConf

    from trainlab.commands.evaluate import OWN_KEYS, SPLITS, checkpoint_path
    from trainlab.record.stored_run import stored_run

    if OmegaConf.is_missing(cfg, "ckpt"):
        raise TrainlabError("evaluate needs a checkpoint: pass ckpt=<file.ckpt | run_dir>")
    if cfg.split not in SPLITS:  # before a run directory is made for it
        from trainlab.core.suggest import did_you_mean

        raise TrainlabError(f"split must be one of {', '.join(SPLITS)} (got {cfg.split!r}"
                            f"{did_you_mean(str(cfg.split), SPLITS).replace(';', ':')})")
    stored_run(checkpoint_path(str(cfg.ckpt)), overrides, OWN_KEYS)


def _summary(cfg, run_dir: Path, overrides: list[str], choices: dict):
    from trainlab.commands.summary import model_summary

    model_summary(cfg, run_dir, overrides)


def _lr_find(cfg, run_dir: Path, overrides: list[str], choices: dict):
    from trainlab.commands.lr_find import lr_find_command

    lr_find_command(cfg, run_dir)


def _compare(args: list[str]) -> None:
    if not args or args[0] in ("-h", "--help"):
        print(COMPARE_USAGE, end="")
        sys.exit(0 if args else 2)
    positional = [a for a in args if "=" not in a]
    options = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = set(options) - {"n", "out"}
    if len(positional) != 2 or unknown:
        fail(f"compare takes two evaluation dirs or checkpoints and optional n=, out= (got {' '.join(args)})")
    if not options.get("n", "10").isdigit() or int(options.get("n", "10")) < 1:
        fail(f"n must be a positive integer (got {options['n']})")
    from trainlab.commands.compare import compare

    _plain(lambda: compare(positional[0], positional[1], int(options.get("n", 10)),
                           Path(options["out"]) if "out" in options else None))


def _key_values(command: str, usage: str, action: Callable[[dict], object], args: list[str]) -> None:
    """A command of key=value options only (predict, export): its usage, or the action in `_plain`."""
    if not args or args[0] in ("-h", "--help"):
        print(usage, end="")
        sys.exit(0 if args else 2)
    loose = [a for a in args if "=" not in a]
    if loose:
        fail(f"{command} takes key=value arguments only (got {loose[0]!r}); see trainlab {command} --help")
    options = dict(a.split("=", 1) for a in args)
    _plain(lambda: action({k: _unquote(v) for k, v in options.items()}))


def _plain(action: Callable) -> None:
    """Run a command that takes no Hydra config: console logging, and user errors as one line."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S", force=True)
    try:
        action()
    except TrainlabError as e:
        if _debug():
            raise
        fail(str(e))


def _one_dir(command: str, args: list[str]) -> Path:
    if len(args) != 1 or args[0] in ("-h", "--help"):
        print(f"usage: trainlab {command} " + ("<run_dir | multirun_dir>" if command == "diagnose" else
              "<run_dir | multirun_dir> [--rows KEY --cols KEY] [--metric 'final val/acc1']\n"
              "       trainlab report <run_dir> <run_dir> ... [--out DIR]   (any runs side by side)\n\n"
              "A sweep's report groups the jobs that differ only in seed (mean ± std, n) and pivots two "
              "overridden keys;\nthe tables are also written as seeds.csv/.md/.tex and pivot.csv/.md/.tex."))
        sys.exit(0 if args and args[0] in ("-h", "--help") else 2)
    path = Path(args[0])
    if not path.is_dir():
        fail(f"{path} is not a directory: pass a trainlab run directory (outputs/<date>/<time>)")
    return path


REPORT_OPTIONS = ("--rows", "--cols", "--metric", "--out")


def _report(args: list[str]) -> None:
    """`trainlab report <dir> [--rows KEY --cols KEY] [--metric NAME]`."""
    from trainlab.commands.report import report
    from trainlab.core.suggest import did_you_mean

    options, rest, items = {}, [], iter(a2 for a in args for a2 in (a.split("=", 1) if a.startswith("--") else [a]))
    for item in items:
        if item.startswith("--") and item not in ("--help",):
            if item not in REPORT_OPTIONS:
                fail(f"unknown option {item}{did_you_mean(item, REPORT_OPTIONS)} (report takes "
                     f"{', '.join(REPORT_OPTIONS)})")
            value = next(items, None)
            if value is None:
                fail(f"{item} needs a value, e.g. {item} optimizer")
            options[item[2:]] = value
        else:
            rest.append(item)
    pivot = (options.get("rows"), options.get("cols"), options.get("metric", "final val/acc1"))
    if len(rest) > 1:  # any runs side by side, not only one sweep's jobs
        _plain(lambda: _compare_runs(rest, Path(options["out"]) if "out" in options else None, pivot))
        return
    path = _one_dir("report", rest)

    def run() -> None:
        md, page = report(path, *pivot)
        print(f"wrote {page} (self-contained) and {md}")

    _plain(run)


def _compare_runs(paths: list[str], out: Path | None, pivot: tuple) -> None:
    from datetime import datetime

    from trainlab.commands.report import sweep_report
    from trainlab.core.fs import claim_out_folder, free_run_dir

    runs = [Path(p) for p in paths]
    for run_dir in runs:
        if not (run_dir / "metrics.csv").is_file() and not (run_dir / "error.txt").is_file():
            raise TrainlabError(f"{run_dir} holds no run (no metrics.csv): `trainlab report A B ...` compares run "
                                "directories; for a whole sweep pass its multirun directory alone")
    out = claim_out_folder(out or free_run_dir(Path("outputs") / "report" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}"),
                           "report.md", "report")
    md, page = sweep_report(out, *pivot, jobs=runs)
    print(f"wrote {page} (self-contained) and {md}")


def _diagnose(args: list[str]) -> None:
    from trainlab.commands.report import print_findings

    path = _one_dir("diagnose", args)
    _plain(lambda: print_findings(path))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"trainlab {trainlab.__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from trainlab.core.suggest import did_you_mean

        fail(f"unknown command '{command}'" + _choose(did_you_mean(command, COMMANDS), COMMANDS)
             + " (see trainlab --help)")
    try:
        if command == "train":
            run_hydra("train", rest, _train, check=_check_train)
        elif command == "evaluate":
            run_hydra("evaluate", rest, _evaluate, config_name="evaluate", check=_check_evaluate)
        elif command == "summary":
            run_hydra("summary", rest, _summary, config_name="summary")
        elif command == "lr-find":
            run_hydra("lr-find", rest, _lr_find, config_name="lr_find")
        elif command == "compare":
            _compare(rest)
        elif command == "predict":
            from trainlab.commands.predict import USAGE as PREDICT_USAGE
            from trainlab.commands.predict import predict_images

            _key_values("predict", PREDICT_USAGE, predict_images, rest)
        elif command == "export":
            from trainlab.commands.export import USAGE as EXPORT_USAGE
            from trainlab.commands.export import export_model

            _key_values("export", EXPORT_USAGE, export_model, rest)
        elif command == "visualize":
            from trainlab.commands.visualize import USAGE as VISUALIZE_USAGE
            from trainlab.commands.visualize import visualize

            _key_values("visualize", VISUALIZE_USAGE, visualize, rest)
        elif command == "report":
            _report(rest)
        elif command == "diagnose":
            _diagnose(rest)
        elif command == "runs":
            from trainlab.commands.runs import USAGE as RUNS_USAGE
            from trainlab.commands.runs import list_runs

            if rest and rest[0] in ("-h", "--help"):
                print(RUNS_USAGE, end="")
                return
            _plain(lambda: list_runs(rest))
    except KeyboardInterrupt:
        print("trainlab: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
