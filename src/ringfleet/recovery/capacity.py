"""An instance placed on the job is running (CapacityArrived): a replacement a recovery waits for, a spare, or room
for the ring to grow — pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ringfleet.core.jobs import Incident, JobState
from ringfleet.core.nodes import Node
from ringfleet.recovery.plan import RecoveryPlan, unchanged
from ringfleet.recovery.ring import reconfigure, try_reconfigure
from ringfleet.recovery.rolling import with_replacement

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job
    from ringfleet.recovery.plan import CapacityArrived

__all__ = ["on_capacity"]


def on_capacity(job: Job, nodes: Sequence[Node], signal: CapacityArrived) -> RecoveryPlan:
    instance = signal.instance_id
    if instance in job.members or instance in job.spares:
        return unchanged(job, "ignored: instance already serves the job")
    after = replace(
        job, spares=(*job.spares, instance), replacements_wanted=max(0, job.replacements_wanted - 1)
    ).with_incident(Incident(at=signal.at, cause="capacity-arrived", generation=job.generation, instance_id=instance))
    known = [
        *nodes,
        Node(instance_id=instance, job_id=job.job_id, host=signal.host, slots=signal.slots, tenant=job.tenant),
    ]
    if after.recovery is not None:
        plan = try_reconfigure(after, known, signal.at)
        return replace(plan, before=job, outcome=f"capacity arrived: {plan.outcome}")
    room = job.worker_room
    if job.state is JobState.RUNNING and room > 0:
        # Running below max_workers (survivors of a loss re-formed without a replacement), or a retiring member
        # waits for its replacement: grow the ring. A membership change at a step boundary, not a failure: nothing
        # is lost.
        joining = after.spares[:room]
        plan = reconfigure(after, known, list(job.members), joining, signal.at, restore=False, cause="grown")
        grown = with_replacement(plan.job, joining)
        return replace(plan, before=job, job=grown, outcome=f"capacity arrived: {plan.outcome}")
    return RecoveryPlan(before=job, job=after, outcome="spare added: no recovery waits for it")
