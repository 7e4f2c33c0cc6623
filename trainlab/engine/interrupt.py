"""SIGINT/SIGTERM (Ctrl-C, a cluster's preemption) become a request to stop after the current step,
so the loop can save a resumable checkpoint. A second signal aborts at once.

In a job that submitit started (hydra/launcher=submitit_slurm or submitit_local), the signal submitit sends
before the time limit or on preemption (USR2 unless SUBMITIT_PREEMPT_SIGNAL names another) is one more such
request: the run saves interrupted.ckpt first, then `requeue()` hands over to submitit's own handler, which
requeues the job; the requeued job finds its checkpoint and continues exactly."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def submitit_job() -> bool:
    """This process is a job that submitit started (it sets SUBMITIT_EXECUTOR in every job's environment)."""
    return os.environ.get("SUBMITIT_EXECUTOR", "") != ""


def requeue_signal() -> int | None:
    """The signal submitit sends this job before its time limit or on preemption; None outside submitit."""
    if not submitit_job():
        return None
    name = "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return getattr(signal, name, None)


def requeue(signum: int) -> bool:
    """After the run saved its checkpoint: let submitit's handler of `signum` requeue the job (it exits this
    process). False when no submitit handler is installed for it."""
    handler = signal.getsignal(signum)
    if not callable(handler) or "submitit" not in getattr(handler, "__module__", ""):
        return False
    log.warning("%s: the checkpoint is saved; submitit requeues this job, which then continues from it",
                signal.Signals(signum).name)
    handler(signum, None)
    return True
DUPLICATE_WINDOW_S = 1.0


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
        self.finishing = False  # past the last epoch: only the summary and plots are left to write
        self._when = 0.0
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            # Ctrl-C reaches a training process twice at once: from the terminal and forwarded by torch's
            # elastic agent. Only a second request a moment later means "abort now".
            if time.monotonic() - self._when < DUPLICATE_WINDOW_S:
                return
            raise KeyboardInterrupt  # second signal: the user really wants out now
        self.signum, self._when = signum, time.monotonic()
        if self.finishing:
            log.warning("%s received: every epoch has run; the run ends once its summary and plots are written "
                        "(seconds; send it again to abort)", signal.Signals(signum).name)
        else:
            log.warning("%s received: finishing the current step and saving a checkpoint "
                        "(send it again to abort without saving)", signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            for sig in SIGNALS + ((requeue_signal(),) if requeue_signal() else ()):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
