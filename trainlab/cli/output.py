"""How the command line answers: a user error is one line on stderr with a non-zero status (TRAINLAB_DEBUG=1 or
HYDRA_FULL_ERROR=1 shows the traceback instead), and the same line goes into the run's log file."""

from __future__ import annotations

import logging
import os
import sys

OWN_FULL_ERROR = "_TRAINLAB_SET_HYDRA_FULL_ERROR"  # trainlab set HYDRA_FULL_ERROR itself (hydra_job), not the user


def debug() -> bool:
    return os.environ.get("TRAINLAB_DEBUG", "") not in ("", "0") or (
        os.environ.get("HYDRA_FULL_ERROR") == "1" and OWN_FULL_ERROR not in os.environ)


def fail(message: str, code: int = 2, prefix: str = "error: ") -> None:
    print(f"trainlab: {prefix}{message}", file=sys.stderr)
    sys.exit(code)

def one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines()]
    keep = [ln for ln in lines if ln and not ln.startswith(("full_key:", "object_type", "reference_type"))]
    return " ".join(keep)

def log_to_files(message: str) -> None:
    """Put the error into the run's log file too, without printing it a second time on the console."""
    record = logging.LogRecord("trainlab", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
