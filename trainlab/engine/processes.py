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


_server: dict = {"pid": None, "env": None}  # the forkserver this module started, and os.environ when it did


def context(cuda: bool) -> BaseContext:
    """forkserver with PRELOAD for a CPU process, spawn for one that will use CUDA, or where there is no forkserver
    (Windows) or something else started it first (its modules and environment are not known)."""
    if cuda or not _forkserver_running():
        return multiprocessing.get_context("spawn")
    return multiprocessing.get_context("forkserver")


def _forkserver_running() -> bool:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from multiprocessing import forkserver

    server = forkserver._forkserver  # (the stdlib's one server per process; its pid is not public)
    if _server["pid"] is None and getattr(server, "_forkserver_pid", None) is not None:
        log.debug("a forkserver that trainlab did not start runs in this process: new processes are spawned")
        return False
    forkserver.set_forkserver_preload(PRELOAD)
    forkserver.ensure_running()  # starts it (or again, had it died), with this environment; returns at once
    if server._forkserver_pid != _server["pid"]:
        _server.update(pid=server._forkserver_pid, env=dict(os.environ))
    return True


def warm_up() -> None:
    """Start the forkserver now, so that its imports run while the caller plans (they take seconds)."""
    _forkserver_running()


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
    """How a process forked from the server gets this process's environment as it is now, with `extra` on top:
    what differs from the server's own (from when it started), for adopt() to set and unset."""
    now, then = {**os.environ, **(extra or {})}, _server["env"] or {}
    return {"set": {k: v for k, v in now.items() if then.get(k) != v}, "unset": [k for k in then if k not in now]}


def adopt(change: dict) -> None:
    """In the new process, first thing. What its starter added (torch's elastic agent: RANK, MASTER_PORT, ...) and
    the parent did not change stays."""
    os.environ.update(change["set"])
    for key in change["unset"]:
        os.environ.pop(key, None)
