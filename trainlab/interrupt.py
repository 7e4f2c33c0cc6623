"""SIGINT/SIGTERM (Ctrl-C, a cluster's preemption) become a request to stop after the current step,
so the loop can save a resumable checkpoint. A second signal aborts at once."""

from __future__ import annotations

import logging
import signal
import threading
import time

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)
DUPLICATE_WINDOW_S = 1.0


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None
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
        log.warning("%s received: finishing the current step and saving a checkpoint "
                    "(send it again to abort without saving)", signal.Signals(signum).name)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # Python only delivers signals there
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
