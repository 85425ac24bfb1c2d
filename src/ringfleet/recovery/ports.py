"""Recovery's own port: the instances' lifecycle as Auto Scaling and EC2 see it."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ringfleet.core.nodes import LifecycleHook

__all__ = ["InstanceLifecycle"]


class InstanceLifecycle(Protocol):
    """The Auto Scaling lifecycle hook (heartbeat while a checkpoint runs, complete with CONTINUE), and which
    instances EC2 no longer runs (a worker's failed collective names no culprit: the fleet does)."""

    def heartbeat_lifecycle_action(self, hook: LifecycleHook) -> None:
        """Extends the hook's timeout while the emergency checkpoint runs."""
        ...

    def complete_lifecycle_action(self, hook: LifecycleHook, result: str = "CONTINUE") -> None:
        """Lets Auto Scaling terminate the instance."""
        ...

    def not_running(self, instance_ids: Collection[str]) -> set[str]:
        """Those of ``instance_ids`` that EC2 does not report running (stopping, shutting down, gone, unknown)."""
        ...
