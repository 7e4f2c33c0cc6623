"""The fresh processes a sweep's jobs (hydra/launcher=parallel), cpu_split's timing processes and CPU DDP's ranks run
in.

A spawned interpreter spends ~7 s on 2 cores importing torch, torchvision and torchmetrics before it does anything.
A CPU process instead forks from Python's forkserver, which imported them once (`PRELOAD`): after the first it
starts in a fraction of a second. The server holds only imported modules (no threads, no CUDA, no data), so what
forks from it is as clean as a spawned interpreter; `environment()` / `adopt()` give it the parent's environment as
it is when the process starts (the server's own is from when it started), and multiprocessing gives it the parent's
working directory and sys.path, as spawn does. A process that will use CUDA is still spawned: CUDA_VISIBLE_DEVICES
must be set before anything in it could have touched the driver, and only a new interpreter guarantees that.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from multiprocessing.context import BaseContext

log = logging.getLogger(__name__)

# What every such process imports: torch (~2 s), torchvision (~1.7 s: it pulls in torch._dynamo), torchmetrics
# (~1.7 s more: scipy.signal) and the training loop with everything it imports (data, record, loggers).
PRELOAD = ["torch", "torchvision", "torchmetrics", "trainlab.engine.fit"]


def context(cuda: bool) -> BaseContext:
    """forkserver with PRELOAD for a CPU process, spawn for one that will use CUDA (or where there is no
    forkserver: not on Windows)."""
    if cuda or "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    forkserver = multiprocessing.get_context("forkserver")
    forkserver.set_forkserver_preload(PRELOAD)  # (read when the server starts: the first process, or warm_up)
    return forkserver


def warm_up() -> None:
    """Start the forkserver now, so that its imports run while the caller plans (they take seconds)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context(cuda=False)
        from multiprocessing import forkserver

        forkserver.ensure_running()


def wait_ready() -> None:
    """Return once the forkserver has imported PRELOAD (a process that does nothing starts and ends), so that the
    next processes' start is timed without that one-off cost."""
    ctx = context(cuda=False)
    if ctx.get_start_method() == "forkserver":
        probe = ctx.Process(target=_nothing, name="trainlab-forkserver-probe", daemon=True)
        probe.start()
        probe.join()


def _nothing() -> None:
    pass


def environment(extra: dict | None = None) -> dict:
    """This process's environment now, with `extra` on top: what adopt() installs in the new process."""
    return {**os.environ, **(extra or {})}


def adopt(env: dict) -> None:
    """In the new process, first thing: its environment becomes `env` (as a spawned interpreter's would be)."""
    os.environ.clear()
    os.environ.update(env)
