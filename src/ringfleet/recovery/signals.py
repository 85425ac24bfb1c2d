"""What each report amounts to as a recovery signal — pure: a cloud event about one instance, a worker's failure.

A failed collective (WorkerFailed scope ``ring``) does not say which peer died, so the fleet does: the shell asks
EC2 which of ``ring_suspects`` it no longer runs, and ``lost_in_ring`` decides from that answer which members the
ring lost. When every member still runs (a crashed process on a live instance) nobody is lost here: the heartbeat
sweep finds the silent one, instead of a restart of a ring whose members are all alive.

Only a job's own nodes speak for it (``reporter_refusal``): one broker user serves every worker, so the broker
cannot tell one job's worker from another's, and a worker of job A could otherwise name job B in a final
CheckpointCompleted (B ends SUCCEEDED) or a WorkerFailed (B restarts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ringfleet.recovery.plan import NodeLost, NoticeGiven, ScriptFailed

if TYPE_CHECKING:
    from collections.abc import Collection

    from ringfleet.contracts import NodeEvent, WorkerFailed
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import Node

__all__ = ["RingLoss", "failure_signal", "lost_in_ring", "reporter_refusal", "ring_suspects", "signal_of"]


def reporter_refusal(job: Job, node: Node | None, instance_id: str, generation: int, *, member: bool) -> str | None:
    """None when instance ``instance_id`` (its node record ``node``, as read) may report about ``job`` at
    ``generation``; otherwise why not, for the log.

    The reporter must be a node of the job that is not lost, at a generation the job has reached; with ``member``
    (a checkpoint, which only the ring writes) it must also be a member of the job's ring. A final checkpoint may
    carry the generation before the current one (see ``ringfleet.recovery.checkpoint``), and its reporter is then
    still a member, so the member test is on today's ring, not on the message's generation. A failure report needs no
    membership: a replacement that fails while it joins is a node of the job, not yet a member.
    """
    from ringfleet.core.nodes import NodeState

    if node is None or node.job_id != job.job_id:
        return f"instance {instance_id} is not a node of job {job.job_id}"
    if node.state in (NodeState.LOST, NodeState.RELEASED):
        return f"instance {instance_id} is a {node.state.value.lower()} node of job {job.job_id}"
    if generation > job.generation:
        return f"generation {generation} is ahead of job {job.job_id}'s ({job.generation})"
    if member and instance_id not in job.members:
        return f"instance {instance_id} is not a member of job {job.job_id}'s ring (generation {job.generation})"
    return None


def signal_of(event: NodeEvent) -> NoticeGiven | NodeLost:
    """The recovery signal a cloud event about one instance amounts to."""
    from ringfleet.contracts import (
        InstanceStateChange,
        LifecycleTerminateAction,
        RebalanceRecommendation,
        SpotInterruptionWarning,
    )
    from ringfleet.core.nodes import LifecycleHook

    if isinstance(event, SpotInterruptionWarning):
        return NoticeGiven(event.instance_id, "spot-interruption", event.time, deadline=event.interruption_at)
    if isinstance(event, RebalanceRecommendation):
        return NoticeGiven(event.instance_id, "rebalance", event.time)
    if isinstance(event, LifecycleTerminateAction):
        d = event.detail
        hook = LifecycleHook(d.auto_scaling_group_name, d.lifecycle_hook_name, d.lifecycle_action_token, d.instance_id)
        return NoticeGiven(event.instance_id, "lifecycle-terminate", event.time, lifecycle_hook=hook)
    if isinstance(event, InstanceStateChange):
        if not event.is_leaving:
            raise ValueError(f"state {event.state!r} of {event.instance_id} is not a node leaving")
        return NodeLost(event.instance_id, "instance-stopped", event.time, detail=f"state {event.state}")
    raise TypeError(f"{type(event).__name__} is not a node event")


def failure_signal(message: WorkerFailed) -> ScriptFailed | NodeLost:
    """A worker's report about itself: its job script failed (scope ``script``: the instance is fine), or the
    worker cannot go on (scope ``self``: it is the lost node). A ring's failure is ``lost_in_ring``'s."""
    if message.scope == "ring":
        raise ValueError("a ring's failure names no lost node by itself: see lost_in_ring")
    if message.scope == "script":
        return ScriptFailed(message.instance_id, message.generation, message.sent_at, message.reason, step=message.step)
    return NodeLost(
        message.instance_id, "worker-failed", message.sent_at, generation=message.generation, detail=message.reason
    )


def ring_suspects(job: Job, message: WorkerFailed) -> tuple[str, ...]:
    """The members to ask EC2 about: the reporter's peers in its generation, or none when that ring was already
    re-formed (its report is stale)."""
    if job.generation != message.generation:
        return ()
    return tuple(i for i in job.members if i != message.instance_id)


@dataclass(frozen=True)
class RingLoss:
    """What a ring's failure lost: the losses to apply in order, or (none) why nothing is decided."""

    lost: tuple[NodeLost, ...]
    outcome: str = ""


def lost_in_ring(job: Job, message: WorkerFailed, not_running: Collection[str]) -> RingLoss:
    """The members a failed collective lost: the reporter's peers that EC2 reports ``not_running``."""
    if job.generation != message.generation:
        return RingLoss((), f"ignored: generation {message.generation}'s ring was already re-formed")
    gone = sorted(i for i in ring_suspects(job, message) if i in not_running)
    if not gone:
        return RingLoss((), "ring broken but every member runs: the heartbeat sweep decides")
    detail = f"not running; ring broken at step {message.step}: {message.reason}"
    return RingLoss(
        tuple(NodeLost(i, "worker-failed", message.sent_at, generation=message.generation, detail=detail) for i in gone)
    )
