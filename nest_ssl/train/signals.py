"""Requests to stop training at the next optimizer step: SIGTERM (preemption) and exp_manager.max_time_per_run.

The trainer asks `requested()` at each step boundary and all-reduces the answer, so every rank stops at the same
step; `preempted` tells which of the two it was.
"""

from __future__ import annotations

import signal
import time
from typing import Any, Optional


class StopRequests:
    """SIGTERM (when `handle_sigterm`, NeMo's create_preemption_callback) and the time limit since construction."""

    def __init__(self, *, handle_sigterm: bool, max_time_per_run: Optional[float]) -> None:
        self.handle_sigterm = handle_sigterm
        self.max_time_per_run = max_time_per_run
        self.start_time = time.time()
        self.preempted = False
        self._previous: Any = None

    def requested(self) -> bool:
        if self.preempted:
            return True
        limit = self.max_time_per_run
        return limit is not None and time.time() - self.start_time >= limit

    def install(self) -> None:
        """Catch SIGTERM until `uninstall()` (only in the main thread, where Python allows signal handlers)."""
        self._previous = None
        if not self.handle_sigterm:
            return
        try:
            previous = signal.getsignal(signal.SIGTERM)

            def handler(signum, frame):
                self.preempted = True

            signal.signal(signal.SIGTERM, handler)
            self._previous = previous
        except ValueError:  # not the main thread
            self._previous = None

    def uninstall(self) -> None:
        """Put back the SIGTERM handler that `install()` replaced."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
