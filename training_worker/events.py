"""The worker's typed event log (``ringfleet.contracts.training``): one JSON line per event, appended as it happens.

The human log lines say the same things for people and may change at will; tools read these. A worker writes them
only when ``RINGFLEET_EVENTS_FILE`` names a file (the local fleet sets one per instance).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ringfleet.contracts.training import EVENTS_FILE_VARIABLE, TrainingEvent

__all__ = ["EventLog"]


class EventLog:
    """Appends events to one file, whole lines only, from any thread."""

    def __init__(self, path: Path | None, instance_id: str, job: Callable[[], str | None] = lambda: None) -> None:
        self.path, self.instance_id, self._job = path, instance_id, job
        self._lock = threading.Lock()

    @classmethod
    def from_env(
        cls, instance_id: str, env: dict[str, str] | None = None, job: Callable[[], str | None] = lambda: None
    ) -> EventLog:
        """``job``: the job the worker serves at the time of each event (None until it is placed)."""
        value = (os.environ if env is None else env).get(EVENTS_FILE_VARIABLE)
        return cls(Path(value) if value else None, instance_id, job)

    def emit(self, kind: type[Any], **fields: Any) -> None:
        """Writes ``kind(**fields)`` stamped with this worker's clock, instance and job; nothing when no file is
        set."""
        if self.path is None:
            return
        event: TrainingEvent = kind(at=time.time(), instance_id=self.instance_id, job_id=self._job(), **fields)
        line = event.model_dump_json() + "\n"
        with self._lock, self.path.open("a") as f:
            f.write(line)
