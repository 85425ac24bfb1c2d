"""Starting to replace a running job's members one at a time through the elastic ring — pure decisions shared by
intake (an upgrade) and recovery (a move back to spot).

A retirement (``ringfleet.core.jobs.Retirement``) starts with a rolling upgrade (``begin_upgrade``: replacements run
the new program, the old workers keep theirs) or with on-demand workers moving back to spot (``begin_move_back``,
decided by the fleet scaler when a spot pool has room). ``ringfleet.recovery.rolling`` carries it on: the replacement
joins as a grow, the first checkpoint of the ring that includes it shows that the new worker restored the job's
state and trains, and the next decision leaves one retiring member out. A checkpoint rather than the replacement's first
heartbeat: a heartbeat says the process is alive, a checkpoint that its ring trained and wrote the job's checkpoint
format, and it is the step boundary at which a move to spot loses nothing (issue 14).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ringfleet.core.jobs import Incident, Job, JobState, Retirement

__all__ = [
    "RetirementRefused",
    "begin_move_back",
    "begin_upgrade",
    "retired_at",
    "retirement_events",
    "retirement_in",
]


class RetirementRefused(ValueError):
    """The job cannot start a retirement now (not running, already retiring, unknown member): nothing changes."""


def _check_retirable(job: Job) -> None:
    if job.state is not JobState.RUNNING:
        raise RetirementRefused(f"job {job.job_id} is {job.state}: only a RUNNING job's workers can be replaced")
    if job.retirement is not None:
        raise RetirementRefused(
            f"job {job.job_id} is already replacing its workers ({job.retirement.kind}, "
            f"{len(job.retirement.retiring)} left): wait until it is done"
        )


def begin_upgrade(job: Job, image: str, entrypoint: tuple[str, ...], at: datetime, *, reference: object = "") -> Job:
    """The job with every current member to retire and the new program as its spec's: every Reconfigure from now
    on names it, so the replacements (placed by a Reconfigure) run it while the old workers keep what they run.
    ``reference`` (the UpgradeJob's message id) ends the started incident's detail: a redelivery finds it there."""
    _check_retirable(job)
    if image == job.spec.image and list(entrypoint) == job.spec.entrypoint:
        raise RetirementRefused(f"job {job.job_id} already runs image {image} with that entrypoint: nothing to upgrade")
    members = tuple(sorted(job.members, key=lambda i: job.members[i]))
    retirement = Retirement(
        kind="upgrade",
        started_at=at,
        retiring=members,
        previous_image=job.spec.image,
        previous_entrypoint=tuple(job.spec.entrypoint),
    )
    spec = job.spec.model_copy(update={"image": image, "entrypoint": list(entrypoint)})
    detail = f"image {job.spec.image} -> {image}, {len(members)} worker(s) to replace; request {reference}"
    return replace(job, spec=spec, retirement=retirement).with_incident(
        Incident(at=at, cause="upgrade-started", generation=job.generation, detail=detail)
    )


def begin_move_back(job: Job, instance_id: str, at: datetime) -> Job:
    """The job with its on-demand member ``instance_id`` to retire: a spot worker replaces it."""
    _check_retirable(job)
    if instance_id not in job.members:
        raise RetirementRefused(f"instance {instance_id} is not a member of job {job.job_id}")
    retirement = Retirement(kind="move-back", started_at=at, retiring=(instance_id,))
    return replace(job, retirement=retirement).with_incident(
        Incident(at=at, cause="move-back-started", generation=job.generation, instance_id=instance_id)
    )


def retirement_in(job: Job) -> Retirement | None:
    """``job``'s retirement as its new ring has it: members lost meanwhile no longer retire, a replacement lost is
    wanted again; None once nothing is left to do."""
    retirement = job.retirement
    if retirement is None:
        return None
    retiring = tuple(i for i in retirement.retiring if i in job.members)
    replacement = retirement.replacement if retirement.replacement in job.members else None
    if not retiring:
        return None
    joined = retirement.joined_generation if replacement is not None else None
    return replace(retirement, retiring=retiring, replacement=replacement, joined_generation=joined)


def retired_at(job: Job) -> dict[str, datetime]:
    """Instance -> when ``job`` left it out of its ring as a retiree (a rolling upgrade's or a move back's), read
    from the job's incident log: the last retiree too, whose retirement is over (``Job.retirement`` is None by
    then, and a worker left out keeps running to its next step boundary: its instance must not be released under it).
    """
    return {i.instance_id: i.at for i in job.incidents if i.instance_id and i.cause in _LEFT_OUT}


#: The causes of the incidents that leave one retiree out of the ring (``rolling.retire_one``: kind-phase).
_LEFT_OUT = frozenset(f"{kind}-{phase}" for kind in ("upgrade", "move-back") for phase in ("progressed", "completed"))


#: Incident cause -> (kind, phase) of the control-plane event it is announced as.
_PHASES = {
    "upgrade-started": "Started",
    "upgrade-progressed": "Progressed",
    "upgrade-completed": "Completed",
    "upgrade-rolled-back": "RolledBack",
}


def retirement_events(before: Job, after: Job) -> list[tuple[str, str]]:
    """(phase, detail) of the upgrade incidents ``after`` added to ``before``: what to announce once it is saved."""
    old = set(before.incidents)
    new = [i for i in after.incidents if i not in old]
    return [(_PHASES[i.cause], i.detail) for i in new if i.cause in _PHASES]
