"""Composing a command's config before Hydra runs it: where the config comes from (trainlab's, `-cp`, `-cd`,
`hydra.searchpath`), the preflight that composes and checks it once so a mistake is one line and no run folder is
made, did-you-mean for options and keys, and writing overrides back so Hydra parses them as given."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from trainlab.cli.output import one_line
from trainlab.core.errors import ConfigError, TrainlabError, yaml_error
from trainlab.core.options import unquote

CONFIG_MODULE = "trainlab.conf"
# Hydra flags after which composing the config ourselves first would be wrong or pointless.
_HYDRA_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--package", "-p",
                "--shell-completion", "-sc",
                "--experimental-rerun", "--version"}

MULTIRUN_FLAGS = {"-m", "--multirun"}


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

def config_path_args(args: list[str]) -> list[str]:
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
            value = unquote(arg.split("=", 1)[1]).strip().strip("[]")
            roots += [unquote(v.strip()) for v in value.split(",") if v.strip()]
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
                raise TrainlabError(f"unknown {group} '{value}'" + choose(did_you_mean(value, options), options))
    return any(o.is_sweep_override() for o in parsed)

def choose(hint: str, options) -> str:
    return f"{hint} (the options: {', '.join(options)})" if hint else f": choose one of {', '.join(options)}"

def preflight(args: list[str], config_name: str, check: Callable | None, check_sweeper: Callable | None = None):
    """Compose the config once before Hydra starts the job, so a config mistake is one line on stderr
    and no run directory is created for it; `check` is the command's, `check_sweeper(cfg, task overrides)` the
    sweeper's (cli.search). Returns the composed config (with Hydra's node, to find the run directory), or None for
    a Hydra flag (--cfg, --help, -cd, ...)."""
    import yaml
    from hydra import compose
    from hydra.errors import HydraException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    if hydra_flag(args):
        return None
    args, configs = config_source(args, config_name)  # a user's own config folders: their options count too
    overrides = [a for a in args
                 if not a.startswith("-") and not a.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    # Hydra's own groups (hydra/launcher=submitit_slurm) are composed too: a plugin that is missing is one line.
    # ... and so are the settings of the sweeper and launcher, which trainlab's own ones check before anything runs.
    plugins = [a for a in args if (a.startswith("hydra/") and "=" in a)
               or a.lstrip("+~").startswith(("hydra.sweeper.", "hydra.launcher."))]
    given = list(overrides)  # a search reads its space from them
    try:
        swept = _check_group_choices(overrides, configs)
        if is_sweep(args) or swept:
            # A sweep: its keys are checked here with its first job's values (a misspelt key fails once, not in every
            # job), and its fixed settings (data, components) without the swept ones; each job checks its own values
            # as it starts, so one bad value of a search space fails only its job.
            first = _first_job(overrides)
            with configs.initialize():
                compose(configs.name, overrides=first + configs.searchpath())
            overrides = [o for o in overrides if o in first]  # the fixed ones
        with configs.initialize():
            cfg = compose(configs.name, overrides=overrides + plugins + configs.searchpath(), return_hydra_config=True)
        if check_sweeper is not None:
            check_sweeper(cfg, given)
        if check is not None:
            check(cfg, overrides)
        return cfg
    except yaml.YAMLError as e:  # a group, experiment or -cp/-cn file of the user's that does not parse
        raise yaml_error(e) from None
    except OverrideParseException as e:
        bad = next((a for a in overrides if _unparsable(a)), "")
        raise ConfigError(f"cannot read the override {bad!r}: put values with spaces or non-ASCII characters in "
                          "quotes, e.g. 'dataset.root=\"/my data/photos\"' (the single quotes keep the shell from "
                          "eating the double ones)" if bad else one_line(str(e))) from None
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        plugin = re.search(r"Could not find 'hydra/(sweeper|launcher)/(\w+)'", str(e))
        if plugin:  # a Hydra plugin that is not installed: the package that brings it
            kind, name = plugin.groups()
            if name == "optuna":  # Hydra's: it pins optuna<3, which trainlab's own search cannot use
                raise ConfigError("the Hydra sweeper 'optuna' is not installed: trainlab's own hydra/sweeper=search "
                                  "reads the same settings (pip install 'trainlab[optuna]'); Hydra's needs pip install "
                                  "hydra-optuna-sweeper 'optuna<3' in an environment of its own") from None
            package = "'trainlab[slurm]'" if "submitit" in name else f"hydra-{name.split('_')[0]}-{kind}"
            raise ConfigError(f"the Hydra {kind} '{name}' is not installed: pip install {package}") from None
        misspelt = re.match(r"Could not override '([^']+)'", str(e))
        if misspelt and misspelt.group(1).startswith("hydra."):  # a sweeper's or launcher's: Hydra's own hint
            hint = re.search(r"To append to your config use (\S+)=", str(e)) if "not in struct" in str(e.__cause__) \
                else None  # a dict that takes new keys (hydra.sweeper.params), not a misspelt setting
            raise ConfigError(f"cannot set {misspelt.group(1)}: {str(e.__cause__ or e).splitlines()[0]}"
                              + (f"; to add keys write {hint.group(1)}=..." if hint else "")) from None
        if misspelt and "not in" in str(e.__cause__ or e):
            raise ConfigError(_unknown_key(overrides, misspelt.group(1), configs)) from None
        cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else None
        # "Error merging override trainer.epochs=abc" alone does not say what is wrong; the cause does.
        raise ConfigError(one_line(f"{e}: {str(cause).splitlines()[0]}" if cause else str(e))) from None

def hydra_flag(args: list[str]) -> bool:
    """A flag Hydra answers without running a job: --help, --cfg job, -sc (a shell's completion), ..."""
    return any(a.split("=")[0] in _HYDRA_FLAGS for a in args)


def is_sweep(args: list[str]) -> bool:
    """-m, a sweeper preset (+hparams_search=...) or hydra.mode=MULTIRUN: Hydra runs a sweep of jobs."""
    return any(a in MULTIRUN_FLAGS or a.lstrip("+").startswith("hparams_search=") or a == "hydra.mode=MULTIRUN"
               for a in args)

def _first_job(overrides: list[str]) -> list[str]:
    """The overrides of a sweep's first job: each swept key at its first value, a search space only the sweeper
    can sample (interval(...)) left out (its key keeps its default here; each job checks its own value)."""
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
            continue
        first.append(as_override(override.get_key_element(), value))
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

def quoted(arg: str) -> str:
    """A command-line `key=value` whose value Hydra's grammar refuses unquoted (a path in Chinese, with spaces, ...)
    quoted for it, as the user meant it; a value that is a sweep or a list (`,`, brackets) or holds quotes is left
    as it is (Hydra's own message then says how to quote it)."""
    if arg.startswith("-") or "=" not in arg:
        return arg
    key, value = arg.split("=", 1)
    if value.isascii() and " " not in value:  # what Hydra's grammar takes unquoted (and the quick answer)
        return arg
    if any(c in value for c in ",[](){}'\"\\") or not _unparsable(arg):
        return arg
    return f"{key}='{value}'" if not _unparsable(f"{key}='{value}'") else arg


def as_override(key: str, value) -> str:
    """`key=value` that Hydra parses back to exactly `value` (a path with spaces or non-ASCII letters is quoted)."""
    plain = f"{key}={value}"
    return plain if not _unparsable(plain) else f"{key}='{value}'"

def option(args: list[str], key: str) -> str | None:
    return next((unquote(a.split("=", 1)[1]) for a in reversed(args) if a.startswith(f"{key}=")), None)
