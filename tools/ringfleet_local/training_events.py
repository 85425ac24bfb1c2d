"""Reads the emulated instances' training events (``ringfleet.contracts.training``) as their workers write them.

Each worker appends typed JSON lines to ``<instance-id>.events.jsonl`` beside its human log; the demo and the tests
follow those files as they grow. A line that is not an event is skipped (counted in ``unreadable``), never guessed at.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from ringfleet.contracts.training import TrainingEvent, parse_training_event

__all__ = ["EVENTS_SUFFIX", "EventFollower", "events_file"]

EVENTS_SUFFIX = ".events.jsonl"


def events_file(folder: Path, instance_id: str) -> Path:
    """Where the worker of ``instance_id`` writes its events, in a log folder."""
    return folder / f"{instance_id}{EVENTS_SUFFIX}"


class EventFollower:
    """Reads the new, complete lines of every events file in a folder, in the workers' time order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.unreadable = 0
        self._offsets: dict[Path, int] = {}

    def poll(self) -> list[TrainingEvent]:
        events: list[TrainingEvent] = []
        for path in sorted(self.folder.glob(f"*{EVENTS_SUFFIX}")) if self.folder.exists() else []:
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            for raw in chunk[:end].splitlines():
                try:
                    events.append(parse_training_event(raw))
                except ValidationError:
                    self.unreadable += 1
        return sorted(events, key=lambda e: e.at)
