"""Clocks tests move by hand: for the local cloud's schedules (the real one: ``ringfleet.core.ports.SystemClock``)
and, shared through a file by every process of a local cloud, for a spot trace replayed in simulated time."""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["FileClock", "ManualClock", "monotonic"]


class ManualClock:
    """A clock that moves only when told: ``advance(60)`` makes every ``rate(1 minute)`` schedule fire once."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)


class FileClock:
    """Seconds that move only when told, read by every process that knows the file: a test moves a spot trace's
    replay (:class:`~ringfleet_local.spot_traces.TraceReplay` with ``clock=FileClock(...)``) to the moment it is
    about, and the fleet emulator and the fleet scaler's process (which rebuilds the replay from its environment)
    both see that moment, instead of waiting for the wall clock to get there.

    Calling it reads the file; :meth:`set` and :meth:`advance` replace it whole (a reader never sees half a number).
    """

    def __init__(self, path: str | Path, start: float | None = None) -> None:
        self.path = Path(path)
        if start is not None:
            self.set(start)
        elif not self.path.exists():
            raise FileNotFoundError(f"{self.path}: no clock there (start one with FileClock(path, start=0))")

    def __call__(self) -> float:
        return float(self.path.read_text())

    def set(self, seconds: float) -> None:
        partial = self.path.with_name(f"{self.path.name}.{os.getpid()}.{threading.get_ident()}")
        partial.write_text(repr(float(seconds)))
        partial.replace(self.path)

    def advance(self, seconds: float) -> None:
        self.set(self() + seconds)


def monotonic() -> float:
    return time.monotonic()
