"""How the runtime ends a script's step: a failed collective (``CollectiveError``, recoverable), a membership change
(``HostsUpdatedInterrupt``, not a failure) or the end of this worker's part (``Stopped``); and ``collective``, which
tells a failure of the ring from a mistake of the script."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["CollectiveError", "HostsUpdatedInterrupt", "Stopped", "collective"]


class CollectiveError(RuntimeError):
    """A collective with the ring's peers failed (a peer died or froze): recoverable by re-forming the ring.

    Only failures of our own collectives are wrapped in it, so a ``RuntimeError`` of the user's code (a shape
    mismatch) is never mistaken for a lost peer: it fails the script instead.
    """


class HostsUpdatedInterrupt(Exception):
    """Raised by ``state.commit()`` when the membership changes: ``@elastic.run`` re-forms the ring and calls the
    training function again from the committed state. Not a failure."""


class Stopped(SystemExit):
    """This worker's part in the job is over (Stop, SIGTERM, a spot notice, left out of the new generation): the
    script ends with exit status 0."""

    def __init__(self, why: str) -> None:
        super().__init__(0)
        self.why = why

    def __str__(self) -> str:
        return self.why


def collective(call: Callable[[], Any]) -> Any:
    """Runs one of our collectives; a failure of the ring becomes a CollectiveError (recoverable)."""
    try:
        return call()
    except CollectiveError:
        raise
    except (RuntimeError, TimeoutError, ConnectionError) as e:
        raise CollectiveError(str(e) or type(e).__name__) from e
