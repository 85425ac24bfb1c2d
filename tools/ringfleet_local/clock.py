"""A clock tests move by hand for the local cloud's schedules (the real one: ``ringfleet.core.ports.SystemClock``)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

__all__ = ["ManualClock", "monotonic"]


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


def monotonic() -> float:
    return time.monotonic()
