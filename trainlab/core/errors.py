"""User-facing errors: the CLI prints their message as one line on stderr and exits non-zero."""


class TrainlabError(Exception):
    """A problem the user can fix (bad config, data, path or checkpoint). The message names the fix. Raised
    anywhere below the CLI; cli/main.py turns it into one line, `trainlab: <label><message>`, and the exit status."""

    exit_code = 2
    label = "error: "


class ConfigError(TrainlabError):
    """The composed configuration is invalid."""


def require(ok: bool, message: str) -> None:
    """A constructor's check of its own arguments: `message` names the key and the allowed values."""
    if not ok:
        raise ConfigError(message)


class DataError(TrainlabError):
    """The data on disk is missing or malformed."""


class CheckpointError(TrainlabError):
    """A checkpoint is missing, unreadable, not trainlab's, or does not fit this run."""


class RunStopped(TrainlabError):
    """Training stopped before its end (non-finite loss, a signal) after saving what can be saved.
    Everything is already written; the message says how to continue."""

    label = ""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class SweepFailed(TrainlabError):
    """Some jobs of a sweep failed (each said why as it ended); the others ran."""

    exit_code = 1


class Crashed(TrainlabError):
    """Not the user's mistake: an exception trainlab did not expect, as one line (TRAINLAB_DEBUG=1 shows where)."""

    exit_code = 1
    label = ""


def yaml_error(error: Exception, path: object = None, fix: str = "") -> ConfigError:
    """A YAML file that does not parse (PyYAML's MarkedYAMLError, from Hydra or trainlab) as one line:
    `<file>:<line>:<column>: <what the parser expected>` (lines and columns from 1, as editors count them)."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    name = str(path or getattr(mark, "name", "") or "a YAML file")
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    context = getattr(error, "context", None)
    fix = fix or "fix the YAML there (an indented 'key: value' per line, lists in [ ] or as '- ' lines)"
    return ConfigError(f"{where}: {problem}{f' ({context})' if context else ''}; {fix}")
