"""An instance is gone without notice (NodeLost: stopped or terminated, silent, its worker failed) — pure.

The ring is broken: the survivors re-form at once from their last in-memory commit, without waiting for a
checkpoint or a replacement (``ringfleet.recovery.ring.try_reconfigure``); with nobody left the job restarts from its
newest durable checkpoint once min_workers instances are there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ringfleet.core.jobs import Incident, JobState, PendingRecovery
from ringfleet.recovery.plan import NodeLost, RecoveryPlan, unchanged
from ringfleet.recovery.ring import try_reconfigure, without_spare

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import Node
    from ringfleet.recovery.plan import Signal

__all__ = ["lost_instances", "on_lost"]


def on_lost(job: Job, nodes: Sequence[Node], signal: NodeLost) -> RecoveryPlan:
    instance = signal.instance_id
    if signal.generation is not None and signal.generation < job.generation:
        return unchanged(job, f"ignored: report of generation {signal.generation} < {job.generation}")
    incident = Incident(
        at=signal.at, cause=signal.cause, generation=job.generation, instance_id=instance, detail=signal.detail
    )
    if instance in job.spares:
        return without_spare(job, instance, incident, "spare lost: dropped from spares")
    if instance not in job.members:
        return unchanged(job, "ignored: instance is not a member of the job's current generation")
    if job.recovery is not None and instance in job.recovery.lost:
        return unchanged(job, "ignored: loss already being handled")
    plan = try_reconfigure(_member_lost(job, nodes, signal).with_incident(incident), nodes, signal.at)
    return replace(plan, before=job, outcome=f"lost without notice: {plan.outcome}")


def _member_lost(job: Job, nodes: Sequence[Node], signal: NodeLost) -> Job:
    """The job recovering without the lost member: it no longer leaves (if it had notice), it is lost; one more
    replacement is wanted unless a notice already wanted one for it."""
    instance = signal.instance_id
    base = job.recovery or PendingRecovery(cause=signal.cause, started_at=signal.at, leaving=())
    lost_recovery = replace(
        base,
        leaving=tuple(i for i in base.leaving if i != instance),
        lost=(*base.lost, instance),
        last_step=base.last_step if base.last_step is not None else _last_step(nodes, job.members),
    )
    wanted = job.replacements_wanted + (0 if instance in base.leaving else 1)
    return replace(job.moved_to(JobState.RECOVERING), recovery=lost_recovery, replacements_wanted=wanted)


def _last_step(nodes: Iterable[Node], members: Mapping[str, int]) -> int | None:
    steps = [n.last_step for n in nodes if n.instance_id in members and n.last_step is not None]
    return max(steps) if steps else None


def lost_instances(job: Job, signal: Signal) -> tuple[str, ...]:
    """The instance a loss reports, unless ``job`` (as decided) still counts it: a stale generation's failure
    report does not mark a member of the current ring lost."""
    if not isinstance(signal, NodeLost):
        return ()
    instance = signal.instance_id
    return () if instance in job.members or instance in job.spares else (instance,)
