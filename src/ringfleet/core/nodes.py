"""The node record: which job an instance serves, at which rank, and when it was last heard from."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

__all__ = ["Node", "NodeState"]


class NodeState(StrEnum):
    #: Placed for a job, not yet in its ring (a spare or a replacement).
    PLACED = "PLACED"
    #: A member of its job's ring.
    ACTIVE = "ACTIVE"
    #: Notice given (spot warning, rebalance, lifecycle hook): still alive, about to go.
    LEAVING = "LEAVING"
    #: Gone (terminated, stopped, silent or failed), or released by its finished job. Never comes back.
    LOST = "LOST"


@dataclass(frozen=True)
class Node:
    """One instance of the fleet (one item of the nodes table)."""

    instance_id: str
    job_id: str
    state: NodeState = NodeState.PLACED
    #: Rank in the job's ring at ``generation``; None for a spare.
    rank: int | None = None
    generation: int = 0
    #: Host (private IP or DNS name) where its worker listens; rank 0's is the ring's rendezvous.
    host: str | None = None
    last_heartbeat: datetime | None = None
    last_step: int | None = None
    #: Auto Scaling lifecycle hook holding this instance in Terminating:Wait, completed once the job let it go.
    lifecycle_hook: LifecycleHook | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class LifecycleHook:
    """An Auto Scaling terminate lifecycle action waiting for CompleteLifecycleAction."""

    auto_scaling_group: str
    hook_name: str
    token: str
    instance_id: str
