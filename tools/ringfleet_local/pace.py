"""How fast a job of the local fleet trains, changed while it trains: the seconds its workers sleep after each step,
in a file the digits example's ``--step-delay-file`` names (every worker of the local fleet runs on this machine and
reads it at each step).

The demo and the e2e tests hold a job slow while they wait for what they look at (an incident struck, a replacement
joined, an upgrade done), then let it run to its last step at full speed: paced by what they wait for, not by a
sleep budget (steps x delay) raced against the control plane on a machine of unknown speed.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["Pace"]


class Pace:
    """The pace file at ``path``, written with ``seconds`` at once (what the job's workers read from their first
    step on, or the job's own ``--step-delay`` while the file is missing)."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path = path
        self.seconds = seconds
        self.set(seconds)

    def hyperparameters(self) -> dict[str, str]:
        """What the job's ``hyperparameters`` add for its script to read the pace from here."""
        return {"step-delay-file": str(self.path)}

    def set(self, seconds: float) -> None:
        """From each worker's next step on, it sleeps ``seconds`` after each step (written whole: no worker reads
        half a number)."""
        part = self.path.with_name(f"{self.path.name}.part")
        part.write_text(f"{seconds}\n")
        os.replace(part, self.path)
        self.seconds = seconds

    def full_speed(self) -> None:
        """The rest of the run trains without sleeping."""
        self.set(0)
