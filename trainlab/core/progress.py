"""Console progress: rich bars on a terminal, a few plain lines when stdout is a file or a pipe."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sized
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger(__name__)
T = TypeVar("T")


_silent = False


def silence() -> None:
    """No bars and no progress lines in this process (training ranks other than 0)."""
    global _silent
    _silent = True


def _interactive() -> bool:
    return sys.stdout.isatty() and not _silent


# Without a terminal (a pipe, a file, a cluster's log) rich would assume 80 columns and wrap paths and table rows
# mid-word; a log is read with a pager or grep, so lines stay whole.
PIPE_WIDTH = 400


def console() -> Console:
    """The console for trainlab's tables and messages: the terminal's width, or unwrapped lines in a pipe."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=PIPE_WIDTH, soft_wrap=True)


def _bar(transient: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
        console=Console(file=sys.stdout), transient=transient,
    )


def progress_iter(items: Sized, description: str) -> Iterator:
    """Iterate `items` with a bar (terminal) or a start/end line (log)."""
    if not _interactive():
        log.info("%s ...", description)
        start = time.perf_counter()
        yield from items
        log.info("%s: done in %.1fs", description, time.perf_counter() - start)
        return
    with _bar(transient=True) as bar:
        task = bar.add_task(description, total=len(items), status="")
        for item in items:
            yield item
            bar.advance(task)


class EpochProgress:
    """The per-epoch bar of the training loop: `update(n, status)` is called every log interval only,
    so it never adds a host sync of its own. Without a terminal it writes the same status as a plain log line."""

    def __init__(self, description: str, total: int):
        self.description, self.total = description, total
        self._bar: Progress | None = _bar(transient=True) if _interactive() else None
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task(description, total=total, status="")

    def update(self, completed: int, status: str) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, status=status)
        else:
            log.info("%s %d/%d  %s", self.description, completed, self.total, status)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> EpochProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
