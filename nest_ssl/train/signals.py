"""Requests to stop training at the next optimizer step: a signal (preemption) and exp_manager.max_time_per_run.

SIGTERM is what torchrun passes on to its workers and what a scheduler sends before its SIGKILL; SIGUSR1 is what
SLURM sends ahead of the time limit with `--signal=USR1@SECONDS`. Both mean "preempted": write the last checkpoint
and exit, resumable. The trainer asks `requested()` / `preempted` at each step boundary and all-reduces the
answers, so every rank stops at the same step even when the signal reaches the ranks at different times.

The deadline of a preempted stop counts from the moment this rank got the signal, or, on a rank that learned of
the stop from the others first, from that moment (`note_stop`).
"""

from __future__ import annotations

import signal
import time
from typing import Any, Optional

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequests:
    """The preemption signals (when `handle_signals`, NeMo's create_preemption_callback) and the time limit since
    construction."""

    def __init__(self, *, handle_signals: bool, max_time_per_run: Optional[float]) -> None:
        self.handle_signals = handle_signals
        self.max_time_per_run = max_time_per_run
        self.start_time = time.time()
        self.preempted = False
        self.signal_name: str | None = None  # the first preemption signal received, e.g. "SIGTERM"
        self.stop_time: float | None = None  # time.monotonic() of that signal, or of the agreed stop (note_stop)
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        if self.preempted:
            return True
        limit = self.max_time_per_run
        return limit is not None and time.time() - self.start_time >= limit

    def note_stop(self) -> None:
        """The ranks agreed to stop for a signal: a rank that has not received it yet counts its deadline from now."""
        if self.stop_time is None:
            self.stop_time = time.monotonic()

    def deadline(self, seconds: float) -> float:
        """time.monotonic() by which a preempted stop should be over."""
        self.note_stop()
        return self.stop_time + seconds

    def _handler(self, signum, frame) -> None:
        if not self.preempted:
            self.signal_name = signal.Signals(signum).name
            self.stop_time = time.monotonic() if self.stop_time is None else self.stop_time
        self.preempted = True

    def install(self) -> None:
        """Catch the preemption signals until `uninstall()` (only in the main thread, where Python allows signal
        handlers)."""
        if not self.handle_signals or self._previous:
            return
        try:
            for sig in PREEMPTION_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        except ValueError:  # not the main thread
            self.uninstall()

    def uninstall(self) -> None:
        """Put back the handlers that `install()` replaced."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}
