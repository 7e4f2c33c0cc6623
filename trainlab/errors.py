"""User-facing errors: the CLI prints their message as one line on stderr and exits non-zero."""


class TrainlabError(Exception):
    """A problem the user can fix (bad config, data, path or checkpoint). The message names the fix."""


class ConfigError(TrainlabError):
    """The composed configuration is invalid."""


class DataError(TrainlabError):
    """The data on disk is missing or malformed."""
