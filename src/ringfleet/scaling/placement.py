"""plan_placement: which running, unassigned instances go to which waiting job — a pure decision.

A PENDING job is started once enough instances of its types are free for its min_workers: it takes up to
max_workers of them, becomes RUNNING at generation 1 and its workers get a Reconfigure naming their ranks.
A RECOVERING job that wants replacements gets instances too, and so does a RUNNING one below its max_workers;
its recovery (plan_recovery's CapacityArrived) decides what to do with them: re-form or grow the ring.
Each instance brings its slots (one per GPU of its type) to its node: the ring's Reconfigure, here and in recovery,
says how many of them the job runs.
Jobs are served in ``fair_order``: running ones first, then tenants in turn, each tenant's oldest job first, so a
stream of small jobs cannot starve a big one forever and no tenant's many jobs starve another tenant's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING

from ringfleet.core.commands import reconfigure_command
from ringfleet.core.jobs import Incident, Job, JobState
from ringfleet.core.nodes import Node, NodeState
from ringfleet.scaling.decisions import is_on_demand
from ringfleet.scaling.fairness import fair_order

if TYPE_CHECKING:
    from ringfleet.contracts import Reconfigure

__all__ = ["FreeInstance", "JobStart", "Placement", "plan_placement"]


@dataclass(frozen=True)
class FreeInstance:
    """A running instance of the fleet that serves no job."""

    instance_id: str
    instance_type: str
    pool: str
    #: Where its worker listens (private IP); rank 0's is the ring's rendezvous.
    host: str | None = None
    #: Its slots: one per GPU of its type, as the instance catalog counts them (``Node.slots``).
    slots: int = 1
    #: The tenant it served (``Node.tenant``): it serves that tenant's jobs only. None: no tenant's yet.
    tenant: str | None = None

    def claimed_by(self, job: Job) -> Node:
        """Its node once placed on ``job``: PLACED, with its host and slots (the ring's Reconfigure needs both) and
        the job's tenant, whose instance it is from now on."""
        return Node(
            self.instance_id, job.job_id, state=NodeState.PLACED, host=self.host, slots=self.slots, tenant=job.tenant
        )

    def may_serve(self, job: Job) -> bool:
        """Whether ``job`` may run on it: one of its instance types, and the tenant it served, if any (an instance is
        never handed from one tenant to another)."""
        return self.instance_type in job.spec.instance_types and self.tenant in (None, job.tenant)


@dataclass(frozen=True)
class JobStart:
    """A PENDING job started: the job to save (from ``before``), the Reconfigure its workers get, and the nodes of
    the instances it takes (claimed before the job is saved)."""

    before: Job
    job: Job
    command: Reconfigure
    claims: tuple[Node, ...]


@dataclass(frozen=True)
class Placement:
    starts: tuple[JobStart, ...]
    #: (job id, instance) for RECOVERING jobs: handed to their recovery as capacity arrived.
    replacements: tuple[tuple[str, FreeInstance], ...]
    #: Instances left free.
    idle: tuple[FreeInstance, ...]


def plan_placement(
    jobs: Sequence[Job],
    free: Sequence[FreeInstance],
    now: datetime,
    on_demand_for: Mapping[str, Mapping[str, int]] | None = None,
) -> Placement:
    """``on_demand_for``: job id -> on-demand pool -> how many more on-demand instances of that pool the fleet's
    decision bought for the job (its placements less what it runs there). An on-demand instance goes only to a job
    it was bought for: taken by whichever job came first (an older job that could wait for spot), the urgent job it
    was launched for waited, and the fleet bought more. None: no such bound (every instance goes to the first fit)."""
    left = list(free)
    allowance = {job: dict(pools) for job, pools in (on_demand_for or {}).items()}
    bounded = allowance if on_demand_for is not None else None
    starts: list[JobStart] = []
    replacements: list[tuple[str, FreeInstance]] = []
    for job in fair_order(jobs):
        fits = _fits(job, left, bounded)
        taken: list[FreeInstance] = []
        if job.state == JobState.PENDING and len(fits) >= job.min_workers:
            # Spread over pools: one pool's interruption wave then takes fewer of the job's workers at once.
            taken = _spread(fits, job.max_workers)
            starts.append(_start(job, taken, now))
        elif job.state in (JobState.RUNNING, JobState.RECOVERING) and fits:
            taken = fits[: job.instances_wanted]
            replacements += [(job.job_id, instance) for instance in taken]
        left = [i for i in left if i not in taken]
        _spend(allowance.get(job.job_id, {}), taken)
    return Placement(tuple(starts), tuple(replacements), tuple(left))


def _spend(room: dict[str, int], taken: Sequence[FreeInstance]) -> None:
    """What ``taken`` uses of a job's on-demand ``room``."""
    for instance in taken:
        if instance.pool in room:
            room[instance.pool] -= 1


def _fits(
    job: Job, left: Sequence[FreeInstance], allowance: Mapping[str, Mapping[str, int]] | None
) -> list[FreeInstance]:
    """The free instances ``job`` may take, its on-demand ones within what was bought for it (``allowance``)."""
    room = dict(allowance.get(job.job_id, {})) if allowance is not None else None
    fits = []
    for instance in left:
        if not instance.may_serve(job):
            continue
        if room is not None and is_on_demand(instance.pool):
            if room.get(instance.pool, 0) <= 0:
                continue
            room[instance.pool] -= 1
        fits.append(instance)
    return fits


def _spread(instances: Sequence[FreeInstance], n: int) -> list[FreeInstance]:
    by_pool: dict[str, list[FreeInstance]] = {}
    for i in sorted(instances, key=lambda i: (i.pool, i.instance_id)):
        by_pool.setdefault(i.pool, []).append(i)
    taken: list[FreeInstance] = []
    while len(taken) < n and any(by_pool.values()):
        for pool in sorted(by_pool):
            if by_pool[pool] and len(taken) < n:
                taken.append(by_pool[pool].pop(0))
    return taken


def _start(job: Job, taken: Sequence[FreeInstance], now: datetime) -> JobStart:
    ranks = {i.instance_id: rank for rank, i in enumerate(taken)}
    after = job.moved_to(JobState.PROVISIONING).reconfigured(ranks)
    after = after.with_incident(
        Incident(
            at=now,
            cause="started",
            generation=after.generation,
            detail=f"world {len(ranks)}",
            # The step it trains on from: the durable checkpoint it restores, if any (the live deadline estimate
            # counts the pace from here, see scaling.reconcile.remaining_hours).
            step=job.durable_checkpoint.step if job.durable_checkpoint else 0,
        )
    )
    claims = tuple(i.claimed_by(job) for i in taken)
    # What to run: the fleet's instances boot with no job and learn it (and its program) from this message.
    command = reconfigure_command(after, claims, now, checkpoint=job.durable_checkpoint)
    after = replace(after, outbox=(command.model_dump(mode="json"),))
    return JobStart(before=job, job=after, command=command, claims=claims)
