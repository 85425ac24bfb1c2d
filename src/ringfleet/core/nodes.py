"""The node record: which job an instance serves, at which rank, and when it was last heard from; and the node
records a job's state implies (``plan_node_updates``, shared by recovery and the fleet scaler's placement)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job

__all__ = ["LifecycleHook", "Node", "NodeState", "plan_node_updates", "release_idle"]


class NodeState(StrEnum):
    #: Placed for a job, not yet in its ring (a spare or a replacement).
    PLACED = "PLACED"
    #: A member of its job's ring.
    ACTIVE = "ACTIVE"
    #: Notice given (spot warning, rebalance, lifecycle hook): still alive, about to go.
    LEAVING = "LEAVING"
    #: Its job is over, but its agent has not yet said that no process of it is left (``InstanceIdle``): neither
    #: the job's nor free, so that nothing is placed where the ended job may still be training.
    RELEASED = "RELEASED"
    #: Gone (terminated, stopped, silent or failed), or released by its finished job and confirmed idle by its
    #: agent. Never comes back to that job; a running instance whose node is LOST is free for another.
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
    #: Its instance's slots: one per GPU of its type, as the instance catalog counts them, recorded when the fleet
    #: scaler placed it (the one place that knows its type and the catalog), so that recovery re-forms the ring with
    #: them without either. Its job runs ``spec.slots_on(slots)`` of them (``reconfigure_command``). A record written
    #: before slots were recorded reads as 1, what its instance ran then.
    slots: int = 1
    #: The tenant whose job it was placed on: an instance serves that tenant only, for as long as it runs (its disk
    #: holds that tenant's checkpoints and data). None: a record written before tenants were recorded.
    tenant: str | None = None


@dataclass(frozen=True)
class LifecycleHook:
    """An Auto Scaling terminate lifecycle action waiting for CompleteLifecycleAction."""

    auto_scaling_group: str
    hook_name: str
    token: str
    instance_id: str


def plan_node_updates(
    job: Job,
    nodes: Sequence[Node],
    at: datetime,
    *,
    lost: Iterable[str] = (),
    hooks: Mapping[str, LifecycleHook] | None = None,
) -> tuple[list[Node], list[LifecycleHook]]:
    """Nodes whose stored record disagrees with ``job``, and lifecycle hooks to complete.

    Derived from the job alone (plus the instances a signal reports ``lost`` and the ``hooks`` a lifecycle notice
    brought), so running it again after a crash changes nothing more. A hook is completed once its instance is no
    longer needed: it left the ring, or its emergency checkpoint is done.
    """
    if job.is_final:
        # The job is over: its instances no longer serve it (the sweep ignores them), and serve another only once
        # their agents confirm they run nothing of it (RELEASED until then; see release_idle).
        done = [
            replace(n, state=NodeState.RELEASED, rank=None, updated_at=at)
            for n in nodes
            if n.state not in (NodeState.LOST, NodeState.RELEASED)
        ]
        return done, [n.lifecycle_hook for n in nodes if n.lifecycle_hook is not None]
    recovery = job.recovery
    gone = set(lost) | (set(recovery.lost) if recovery else set())
    checkpoint_pending = bool(recovery and recovery.awaiting_checkpoint)
    updates: list[Node] = []
    release: list[LifecycleHook] = []
    for node in nodes:
        want = _wanted_node(job, node, gone, (hooks or {}).get(node.instance_id))
        want, hook = _releasing_hook(want, checkpoint_pending=checkpoint_pending)
        if hook is not None:
            release.append(hook)
        if want != node:
            updates.append(replace(want, updated_at=at))
    return updates, release


def _releasing_hook(want: Node, *, checkpoint_pending: bool) -> tuple[Node, LifecycleHook | None]:
    """``want`` without its lifecycle hook, and the hook to complete, once the instance is no longer needed: it is
    lost, or it leaves and no emergency checkpoint waits for it; otherwise ``want`` as it is and None."""
    hook = want.lifecycle_hook
    if hook is None:
        return want, None
    if want.state is NodeState.LOST or (want.state is NodeState.LEAVING and not checkpoint_pending):
        return replace(want, lifecycle_hook=None), hook
    return want, None


def _wanted_node(job: Job, node: Node, gone: set[str], hook: LifecycleHook | None) -> Node:
    """``node`` as ``job`` (not final) has it, holding ``hook`` (a lifecycle notice about it) unless it is lost."""
    instance = node.instance_id
    leaving = job.recovery.leaving if job.recovery else ()
    want = node
    if hook is not None and node.state is not NodeState.LOST:
        want = replace(want, lifecycle_hook=hook)
    if instance in gone:
        return replace(want, state=NodeState.LOST, rank=None)
    if instance in leaving:
        return replace(want, state=NodeState.LEAVING)
    if instance in job.members:
        return replace(want, state=NodeState.ACTIVE, rank=job.members[instance], generation=job.generation)
    if instance in job.spares:
        return replace(want, state=NodeState.PLACED, rank=None)
    if node.state in (NodeState.ACTIVE, NodeState.LEAVING):
        # Was in the ring, is not any more (reconfigured out after its notice): it is no longer the job's.
        return replace(want, state=NodeState.LOST, rank=None)
    # A PLACED node the job does not list yet was placed after this read; the fleet scaler brings it in.
    return want


def release_idle(node: Node | None, job: Job | None, at: datetime) -> Node | None:
    """``node`` (its job ``job`` as read) once its agent said it runs no job (``InstanceIdle``): free (LOST) when its
    job is over, whether recovery already marked it RELEASED or not (a cancelled job's nodes keep their state); None
    when that changes nothing: an unknown or already free instance, or a live job's node (a member that booted again
    is the heartbeat sweep's to judge, never freed by what it says of itself)."""
    if node is None or node.state is NodeState.LOST:
        return None
    if node.state is not NodeState.RELEASED and job is not None and not job.is_final:
        return None
    return replace(node, state=NodeState.LOST, rank=None, updated_at=at)
