"""What the runtime needs of a script's training state: the last commit (a checkpoint writes it) and a call after
the ring re-formed around it. ``training_worker.elastic.TorchState`` is one; the runtime never imports it."""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["TrainingState"]


class TrainingState(Protocol):
    def committed(self) -> dict[str, Any]:
        """The tree of the last commit: what a checkpoint saves."""
        ...

    def on_reset(self) -> None:
        """The ring re-formed at a step boundary (the survivors of a shrink train on): rescale learning rates..."""
        ...
