"""An instance will go, with notice (NoticeGiven: spot interruption warning, rebalance recommendation, Auto Scaling
terminate hook) — pure.

With notice the ring loses nothing: the control plane asks for an emergency checkpoint (CheckpointNow) and wants a
replacement; the ring re-forms without the leaving member once both are there (``ringfleet.recovery.checkpoint``,
``ringfleet.recovery.capacity``). A rebalance recommendation with a spare at hand migrates the rank at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ringfleet.core.commands import command_message_id
from ringfleet.core.jobs import Incident, JobState, PendingRecovery
from ringfleet.recovery.checkpoint import emergency_checkpoint_taken
from ringfleet.recovery.plan import RecoveryPlan, unchanged
from ringfleet.recovery.ring import try_reconfigure, without_spare

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointNow, Reconfigure
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import Node
    from ringfleet.recovery.plan import NoticeGiven

__all__ = ["on_notice"]


def on_notice(job: Job, nodes: Sequence[Node], signal: NoticeGiven) -> RecoveryPlan:
    instance = signal.instance_id
    incident = Incident(at=signal.at, cause=signal.cause, generation=job.generation, instance_id=instance)
    if instance in job.spares:
        return without_spare(job, instance, incident, "spare leaving: dropped from spares")
    if instance not in job.members:
        return unchanged(job, "ignored: instance is not a member of the job's current generation")
    recovery = job.recovery
    if recovery is not None and (instance in recovery.leaving or instance in recovery.lost):
        return unchanged(job, "ignored: notice already being handled")
    if signal.cause == "rebalance" and job.spares:
        # Spare capacity is already there: migrate the rank now, before any interruption.
        migrating = _recovery_with(job, signal, awaiting_checkpoint=False)
        plan = try_reconfigure(replace(job, recovery=migrating).with_incident(incident), nodes, signal.at)
        return replace(plan, before=job, outcome="rebalance: rank migrated to a spare")
    taken = emergency_checkpoint_taken(job)
    if recovery is None and taken is not None:
        return _checkpoint_already_taken(job, nodes, signal, incident, taken)
    return _ask_for_checkpoint(job, signal, incident)


def _checkpoint_already_taken(
    job: Job, nodes: Sequence[Node], signal: NoticeGiven, incident: Incident, taken: int
) -> RecoveryPlan:
    """The workers saw the notice first (instance metadata) and their emergency checkpoint is already in: no
    CheckpointNow, only the replacement to wait for."""
    ready = replace(_recovery_with(job, signal, awaiting_checkpoint=False), checkpoint_step=taken)
    after = replace(
        job.moved_to(JobState.RECOVERING), recovery=ready, replacements_wanted=job.replacements_wanted + 1
    ).with_incident(incident)
    plan = try_reconfigure(after, nodes, signal.at)
    return replace(plan, before=job, outcome=f"notice: checkpoint already taken at step {taken}, {plan.outcome}")


def _ask_for_checkpoint(job: Job, signal: NoticeGiven, incident: Incident) -> RecoveryPlan:
    """The job recovers: CheckpointNow (unless one is already asked for) and one more replacement wanted."""
    recovery = job.recovery
    asking = recovery is None or not recovery.awaiting_checkpoint
    after = replace(
        job.moved_to(JobState.RECOVERING),
        recovery=_recovery_with(job, signal, awaiting_checkpoint=True),
        replacements_wanted=job.replacements_wanted + 1,
    ).with_incident(incident)
    commands: tuple[CheckpointNow | Reconfigure, ...] = ()
    if asking:
        commands = (_checkpoint_now(job, signal),)
    outcome = "notice: checkpoint requested, replacement wanted" if asking else "notice: checkpoint already requested"
    return RecoveryPlan(before=job, job=after, commands=commands, outcome=outcome)


def _recovery_with(job: Job, signal: NoticeGiven, *, awaiting_checkpoint: bool) -> PendingRecovery:
    """The job's recovery with the noticed instance leaving (a new recovery, or the one under way)."""
    current = job.recovery
    leaving = (signal.instance_id,)
    if current is None:
        return PendingRecovery(
            cause=signal.cause,
            started_at=signal.at,
            leaving=leaving,
            awaiting_checkpoint=awaiting_checkpoint,
            deadline=signal.deadline,
        )
    deadlines = [d for d in (current.deadline, signal.deadline) if d is not None]
    return replace(
        current,
        leaving=(*current.leaving, *leaving),
        awaiting_checkpoint=current.awaiting_checkpoint or awaiting_checkpoint,
        deadline=min(deadlines) if deadlines else None,
    )


def _checkpoint_now(job: Job, signal: NoticeGiven) -> CheckpointNow:
    from ringfleet.contracts import CheckpointNow

    return CheckpointNow(
        job_id=job.job_id,
        generation=job.generation,
        reason=signal.cause,
        deadline=signal.deadline,
        message_id=command_message_id(job.job_id, job.generation, f"CheckpointNow:{signal.instance_id}"),
        sent_at=signal.at,
    )
