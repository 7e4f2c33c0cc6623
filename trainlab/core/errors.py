"""User-facing errors: the CLI prints their message as one line on stderr and exits non-zero."""


class TrainlabError(Exception):
    """A problem the user can fix (bad config, data, path or checkpoint). The message names the fix."""

    exit_code = 2


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

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
