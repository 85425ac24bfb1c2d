"""Rolling upgrades and moves back to spot: replacing a job's members one at a time through the ring — pure.

A retirement is started by intake (``begin_upgrade``, for an UpgradeJob) or here (``on_retire_requested``: the fleet
scaler found spot room for an on-demand member), both in ``ringfleet.core.retirement``. It goes on as:

1. a replacement arrives and joins as a grow (``ringfleet.recovery.capacity``, marked by ``with_replacement``);
2. the ring that includes it checkpoints (``replacement_ran``): ``retire_one`` leaves one retiring member out;
3. until none is left (Upgrade Completed); a new-version replacement whose script fails rolls the upgrade back
   (``roll_back``) instead of counting against ``max_restarts``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ringfleet.core.jobs import Incident, JobState
from ringfleet.core.retirement import RetirementRefused, begin_move_back
from ringfleet.recovery.plan import RecoveryPlan, unchanged
from ringfleet.recovery.ring import reconfigure

if TYPE_CHECKING:
    from datetime import datetime

    from ringfleet.core.jobs import Job, Retirement
    from ringfleet.core.nodes import Node
    from ringfleet.recovery.plan import RetireRequested, ScriptFailed

__all__ = [
    "is_upgrade_replacement",
    "on_retire_requested",
    "replacement_ran",
    "retire_one",
    "roll_back",
    "with_replacement",
]


def on_retire_requested(job: Job, signal: RetireRequested) -> RecoveryPlan:
    """Marks one on-demand member to retire; at most one retirement per job, never while it recovers."""
    if job.recovery is not None or job.state is not JobState.RUNNING:
        return unchanged(job, "ignored: the job is recovering")
    try:
        after = begin_move_back(job, signal.instance_id, signal.at)
    except RetirementRefused as exc:
        return unchanged(job, f"ignored: {exc}")
    return RecoveryPlan(before=job, job=after, outcome=f"move back to spot: {signal.instance_id} to be replaced")


def with_replacement(job: Job, joining: Sequence[str]) -> Job:
    """The grown ``job`` with the newcomer that replaces the next retiring member (when one waits for it)."""
    retirement = job.retirement
    if retirement is None or retirement.replacement is not None or not joining:
        return job
    return replace(job, retirement=replace(retirement, replacement=joining[-1], joined_generation=job.generation))


def replacement_ran(job: Job) -> bool:
    """The ring that includes the retirement's replacement is the job's (and just checkpointed): one retiring
    member may leave."""
    retirement = job.retirement
    return (
        retirement is not None
        and retirement.replacement in job.members
        and retirement.joined_generation is not None
        and job.generation >= retirement.joined_generation
    )


def retire_one(job: Job, nodes: Sequence[Node], at: datetime) -> RecoveryPlan:
    """The ring without its next retiring member (the leave-out shrink: the others train on at the next step
    boundary, it stops and its instance is released); the retirement goes on with the rest, or is complete."""
    retirement = job.retirement
    assert retirement is not None
    leaving = next((i for i in retirement.retiring if i in job.members and i != retirement.replacement), None)
    survivors = [i for i in job.members if i != leaving]
    if leaving is None or len(survivors) < job.min_workers:
        return unchanged(job, "no retiring member can leave without going below min_workers")
    plan = reconfigure(job, nodes, survivors, [], at, restore=False, cause="retired")
    kept, phase, detail = _after_one_left(retirement, leaving, plan.job)
    incident = Incident(
        at=at, cause=f"{retirement.kind}-{phase}", generation=plan.job.generation, instance_id=leaving, detail=detail
    )
    after = replace(plan.job, retirement=kept).with_incident(incident)
    return replace(plan, job=after, outcome=f"{leaving} retired: {plan.outcome}")


def _after_one_left(retirement: Retirement, leaving: str, job: Job) -> tuple[Retirement | None, str, str]:
    """The retirement once ``leaving`` left ``job``'s ring: (what goes on, or None; its phase; the detail)."""
    rest = tuple(i for i in retirement.retiring if i != leaving and i in job.members)
    replaced = retirement.replaced + 1
    if not rest:
        return None, "completed", f"{replaced} worker(s) replaced"
    kept = replace(
        retirement,
        retiring=rest,
        replacement=None,
        joined_generation=None,
        replaced=replaced,
    )
    return kept, "progressed", f"{replaced} worker(s) replaced, {len(rest)} left"


def is_upgrade_replacement(job: Job, instance_id: str) -> bool:
    """``instance_id`` runs the upgrade's new version (its failure is the version's, not the job's)."""
    retirement = job.retirement
    return retirement is not None and retirement.kind == "upgrade" and retirement.replacement == instance_id


def roll_back(job: Job, nodes: Sequence[Node], signal: ScriptFailed) -> RecoveryPlan:
    """A new-version worker failed: the upgrade stops. The job's program goes back to the old one, the ring goes on
    without the failed replacement (whose instance is released), and the failure does not count against
    ``max_restarts``: the old workers never stopped, the job did not fail."""
    retirement = job.retirement
    assert retirement is not None and retirement.previous_image is not None
    spec = job.spec.model_copy(
        update={"image": retirement.previous_image, "entrypoint": list(retirement.previous_entrypoint)}
    )
    restored = replace(job, spec=spec, retirement=None)
    survivors = [i for i in job.members if i != signal.instance_id]
    plan = reconfigure(restored, nodes, survivors, [], signal.at, restore=False, cause="rolled-back")
    incident = Incident(
        at=signal.at,
        cause="upgrade-rolled-back",
        generation=plan.job.generation,
        instance_id=signal.instance_id,
        detail=f"the new version failed on {signal.instance_id}: {signal.reason}",
        step=signal.step,
    )
    return replace(
        plan, before=job, job=plan.job.with_incident(incident), outcome=f"upgrade rolled back: {plan.outcome}"
    )
