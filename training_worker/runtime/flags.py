"""The step-boundary flags: raised from any thread (a command, a notice, a newer generation), taken at each step
boundary, where every rank OR-s them with the others' (see ``training_worker.runtime.boundary``)."""

from __future__ import annotations

import threading

__all__ = ["CHECKPOINT", "FLAGS", "LEAVE", "RECONFIGURE", "STOP", "Flags"]

#: The flags' places in the exchange, OR-ed across ranks at every commit, so every rank acts on them at the same step.
RECONFIGURE, STOP, CHECKPOINT, LEAVE = range(4)
FLAGS = 4


class Flags:
    """What this rank wants done at the next step boundary, and whether it is leaving."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = [False] * FLAGS
        #: The generation a CheckpointNow was asked of: one asked of a ring that is gone is dropped (``ring_joined``).
        self._checkpoint_generation = -1
        self._leaving = False

    @property
    def leaving(self) -> bool:
        """This worker leaves (SIGTERM, a spot notice, left out of the newest generation)."""
        return self._leaving

    def raise_flag(self, flag: int) -> None:
        with self._lock:
            self._pending[flag] = True

    def checkpoint_asked(self, generation: int) -> None:
        """CheckpointNow of ``generation``: checkpoint at the next step boundary."""
        self._checkpoint_generation = generation
        self.raise_flag(CHECKPOINT)

    def leave(self) -> None:
        """Leave at the next step boundary (after its emergency checkpoint)."""
        self._leaving = True
        self.raise_flag(LEAVE)

    def left_out(self) -> None:
        """The newest generation goes on without this worker: it leaves at the boundary being taken."""
        self._leaving = True

    def take(self) -> list[bool]:
        """The flags raised since the last boundary, cleared."""
        with self._lock:
            local, self._pending = self._pending, [False] * FLAGS
        return local

    def ring_joined(self, generation: int) -> None:
        """This worker joined ``generation``'s ring: a CheckpointNow asked of an older one is dropped."""
        with self._lock:
            if self._checkpoint_generation < generation:
                # Asked of a ring that is gone: the new ring's state is no less durable than what that checkpoint
                # would have saved.
                self._pending[CHECKPOINT] = False
