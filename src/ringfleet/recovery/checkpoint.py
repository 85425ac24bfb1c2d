"""A checkpoint the ring reported (CheckpointTaken): the emergency one a notice waits for, the final one that ends the
job, the one that lets a retiring member go — pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ringfleet.core.jobs import Incident, JobState
from ringfleet.recovery.plan import RecoveryPlan, unchanged
from ringfleet.recovery.ring import try_reconfigure
from ringfleet.recovery.rolling import replacement_ran, retire_one

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import Node
    from ringfleet.recovery.plan import CheckpointTaken

__all__ = ["emergency_checkpoint_taken", "on_checkpoint"]


def on_checkpoint(job: Job, nodes: Sequence[Node], signal: CheckpointTaken) -> RecoveryPlan:
    recovery = job.recovery
    # A final checkpoint ends the job whichever generation reports it: workers take a generation that adds members
    # only once the newcomers are ready, so the ring that trained the last step may be the one before a growth the
    # control plane announced to a replacement that never got ready.
    if signal.final:
        return _finished(job, signal)
    if signal.generation != job.generation:
        return unchanged(job, f"ignored: checkpoint of generation {signal.generation}, job is at {job.generation}")
    if recovery is None and replacement_ran(job):
        plan = retire_one(job, nodes, signal.at)
        return replace(plan, outcome=f"checkpoint at step {signal.step} with the replacement: {plan.outcome}")
    if recovery is None or not recovery.awaiting_checkpoint:
        return _noted(job, signal)
    after = replace(job, recovery=replace(recovery, awaiting_checkpoint=False, checkpoint_step=signal.step))
    plan = try_reconfigure(after, nodes, signal.at)
    return replace(plan, before=job, outcome=f"emergency checkpoint at step {signal.step}: {plan.outcome}")


def _finished(job: Job, signal: CheckpointTaken) -> RecoveryPlan:
    """The job's last step is checkpointed: it ends SUCCEEDED and lets its spares and replacements go."""
    finished = Incident(at=signal.at, cause="finished", generation=job.generation, detail=f"step {signal.step}")
    after = replace(job.moved_to(JobState.SUCCEEDED), recovery=None, replacements_wanted=0, spares=())
    return RecoveryPlan(
        before=job, job=after.with_incident(finished), outcome=f"finished: final checkpoint at step {signal.step}"
    )


def _noted(job: Job, signal: CheckpointTaken) -> RecoveryPlan:
    """A checkpoint no recovery waits for: an emergency one is remembered (its notice may still come)."""
    if not signal.emergency or job.recovery is not None:
        return unchanged(job, "checkpoint noted: no recovery waits for it")
    if emergency_checkpoint_taken(job) is not None:
        return unchanged(job, "emergency checkpoint already noted")
    # The workers saw a notice (instance metadata, SIGTERM) before the control plane did: remembered, so that the
    # notice, when it arrives, does not wait for a checkpoint that will not come again.
    noted = Incident(at=signal.at, cause="emergency-checkpoint", generation=job.generation, detail="", step=signal.step)
    outcome = "emergency checkpoint noted before its notice"
    return RecoveryPlan(before=job, job=job.with_incident(noted), outcome=outcome)


def emergency_checkpoint_taken(job: Job) -> int | None:
    """The step of an emergency checkpoint the current generation reported before any notice reached the job."""
    steps = [
        i.step
        for i in job.incidents
        if i.cause == "emergency-checkpoint" and i.generation == job.generation and i.step is not None
    ]
    return max(steps) if steps else None
