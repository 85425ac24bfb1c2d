"""Reads what the emulated instances' workers print: progress, generations joined, failures, the end of the run.

The demo follows every worker's log file as it grows. Log records carry the worker's own timestamp (``asctime``);
progress lines (stdout) carry none and are stamped when read, a fraction of a second late at most.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

__all__ = ["LogFollower", "WorkerLine", "parse_line"]

_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_PATTERNS = {
    "progress": re.compile(
        r"\bstep (?P<step>\d+) loss (?P<loss>[\d.]+|-) samples/s \d+ world (?P<world>\d+) rank (?P<rank>\d+) "
        r"generation (?P<generation>\d+)"
    ),
    "joining": re.compile(r"joining generation (?P<generation>\d+) as rank (?P<rank>\d+) of (?P<world>\d+)"),
    "synced": re.compile(r"generation (?P<generation>\d+): state synced from rank \d+ at step (?P<step>\d+)"),
    "failed": re.compile(
        r"collective failed at step (?P<reached>\d+) in generation (?P<generation>\d+) .*"
        r"restored the commit of step (?P<step>\d+)"
    ),
    "left": re.compile(
        r"(?:a rank leaves|membership changes) after step (?P<reached>\d+): leaving generation (?P<generation>\d+)"
    ),
    "shrank": re.compile(r"generation (?P<generation>\d+): shrank to (?P<world>\d+) at step (?P<step>\d+)"),
    "finished": re.compile(r"^finished: (?P<outcome>\w+) at step (?P<step>\d+)"),
}


@dataclass(frozen=True)
class WorkerLine:
    """One line that matters, from one worker: ``kind`` is a key of the patterns above."""

    instance_id: str
    kind: str
    #: Seconds since the epoch: the worker's own stamp when the line has one, else when it was read.
    at: float
    fields: dict[str, str] = field(default_factory=dict)

    def int(self, name: str) -> int:
        return int(self.fields[name])


def parse_line(instance_id: str, line: str, read_at: float) -> WorkerLine | None:
    at = read_at
    stamp = _STAMP.match(line)
    if stamp:
        at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()
    for kind, pattern in _PATTERNS.items():
        match = pattern.search(line)
        if match:
            return WorkerLine(instance_id, kind, at, match.groupdict())
    return None


class LogFollower:
    """Reads the new, complete lines of every worker log in a folder (``<instance-id>.log``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._offsets: dict[Path, int] = {}

    def poll(self, now: float) -> list[WorkerLine]:
        lines: list[WorkerLine] = []
        for path in sorted(self.folder.glob("*.log")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
            end = chunk.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            for raw in chunk[:end].decode(errors="replace").splitlines():
                parsed = parse_line(path.stem, raw, now)
                if parsed is not None:
                    lines.append(parsed)
        return sorted(lines, key=lambda w: w.at)
