"""Re-forming a job's ring: the next generation and its Reconfigure, once a recovery has what it waits for — pure.

Every signal that changes the ring's members ends here: a recovery that can go on (``try_reconfigure``), or a
membership change decided outright (``reconfigure``: a grow, a retired member left out, a script run again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from ringfleet.core.commands import reconfigure_command
from ringfleet.core.jobs import Incident
from ringfleet.core.retirement import retirement_in
from ringfleet.recovery.plan import RecoveryPlan

if TYPE_CHECKING:
    from ringfleet.core.jobs import DurableCheckpoint, Job, PendingRecovery
    from ringfleet.core.nodes import Node

__all__ = ["reconfigure", "try_reconfigure", "without_spare"]


def without_spare(job: Job, instance_id: str, incident: Incident, outcome: str) -> RecoveryPlan:
    """A spare that leaves or is lost is dropped from the job's spares: the ring does not change."""
    after = replace(job, spares=tuple(s for s in job.spares if s != instance_id)).with_incident(incident)
    return RecoveryPlan(before=job, job=after, outcome=outcome)


def try_reconfigure(job: Job, nodes: Sequence[Node], at: datetime) -> RecoveryPlan:
    """Re-forms the ring when the recovery has what it waits for; otherwise the job as given, waiting."""
    recovery = job.recovery
    assert recovery is not None
    gone = set(recovery.leaving) | set(recovery.lost)
    survivors = [i for i in job.members if i not in gone]  # reconfigure keeps their rank order
    spares = list(job.spares)
    if recovery.lost:
        return _reform_broken_ring(job, nodes, survivors, spares, at)
    if recovery.awaiting_checkpoint:
        return RecoveryPlan(before=job, job=job, outcome="waiting for the emergency checkpoint")
    if len(spares) < len(recovery.leaving):
        return RecoveryPlan(before=job, job=job, outcome="checkpoint done; waiting for replacement capacity")
    return reconfigure(job, nodes, survivors, spares[: len(recovery.leaving)], at, restore=False)


def _reform_broken_ring(
    job: Job, nodes: Sequence[Node], survivors: list[str], spares: list[str], at: datetime
) -> RecoveryPlan:
    """A member was lost: re-form now with whoever is there, without waiting for a checkpoint; restart from the
    durable checkpoint when no survivor is left; wait when too few instances are there for min_workers."""
    if survivors:
        joining = spares[: max(0, job.max_workers - len(survivors))]
        if len(survivors) + len(joining) >= job.min_workers:
            return reconfigure(job, nodes, survivors, joining, at, restore=False)
    elif len(spares) >= job.min_workers:
        return reconfigure(job, nodes, [], spares[: job.max_workers], at, restore=True)
    shortfall = job.min_workers - len(survivors) - len(spares)
    return RecoveryPlan(
        before=job,
        job=replace(job, replacements_wanted=max(job.replacements_wanted, shortfall)),
        outcome=f"waiting for {shortfall} more instance(s) to reach min_workers",
    )


def reconfigure(
    job: Job,
    nodes: Sequence[Node],
    survivors: Sequence[str],
    joining: Sequence[str],
    at: datetime,
    *,
    restore: bool,
    cause: str | None = None,
) -> RecoveryPlan:
    """The next generation: ``survivors`` keep their order (rank 0 first), ``joining`` spares follow."""
    survivors = sorted(survivors, key=lambda i: job.members[i])
    ranks = {instance: rank for rank, instance in enumerate([*survivors, *joining])}
    checkpoint = job.durable_checkpoint if restore else None
    after = replace(
        job.reconfigured(ranks, spares=tuple(s for s in job.spares if s not in ranks)),
        restoring_step=checkpoint.step if checkpoint else None,
    )
    after = replace(after, retirement=retirement_in(after))
    command = reconfigure_command(after, nodes, at, checkpoint=checkpoint)
    cause = cause or ("restarted" if restore else "reconfigured")
    detail = f"world {len(ranks)}" + (f", from step {checkpoint.step}" if checkpoint else "")
    after = after.with_incident(
        Incident(
            at=at,
            cause=cause,
            generation=after.generation,
            detail=detail,
            step=checkpoint.step if checkpoint else None,  # a restore: the step the job trains on from
        )
    )
    outcome = f"{cause} at generation {after.generation} ({detail})"
    recovery = job.recovery
    if recovery is None:
        return RecoveryPlan(before=job, job=after, commands=(command,), outcome=outcome)
    metrics = _recovery_metrics(recovery, at, checkpoint, restore=restore)
    return RecoveryPlan(
        before=job, job=after, commands=(command,), outcome=outcome, metrics=metrics, cause=recovery.cause
    )


def _recovery_metrics(
    recovery: PendingRecovery, at: datetime, checkpoint: DurableCheckpoint | None, *, restore: bool
) -> dict[str, float]:
    """How long the recovery took, and the steps it lost: back to the checkpoint a restart loads, at most one for
    survivors of a loss (their last in-memory commit), none when notice let them checkpoint first."""
    if restore:
        reached = recovery.last_step if recovery.last_step is not None else 0
        lost = float(max(0, reached - (checkpoint.step if checkpoint else 0)))
    elif recovery.lost and recovery.checkpoint_step is None:
        lost = 1.0
    else:
        lost = 0.0
    return {"TimeToRecover": max(0.0, (at - recovery.started_at).total_seconds()), "StepsLost": lost}
