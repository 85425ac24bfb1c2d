"""fair_order: the order in which the scaler serves jobs, so that no tenant's job ids or numbers crowd out another's.

The scaler gives each job its minimum in turn while the fleet has room (``decide_scaling``) and hands free instances
out in turn (``plan_placement``): whoever comes first is served first. Jobs that already run come before jobs that
wait (a newcomer never takes a running job's minimum away); within each group the tenants take turns, each
tenant's oldest job first, then each tenant's second oldest, and so on, each turn oldest first. A tenant that
submits a hundred jobs, or names them to sort first, gets one job served per turn like every other tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ringfleet.core.jobs import JobState

if TYPE_CHECKING:
    from ringfleet.core.jobs import Job

__all__ = ["fair_order"]


def _age(job: Job) -> tuple[str, str]:
    return (job.created_at.isoformat() if job.created_at else "", job.job_id)


def fair_order(jobs: Sequence[Job]) -> list[Job]:
    """``jobs`` started ones first, then round-robin by tenant, each tenant's jobs oldest first (see the module)."""
    turn: dict[tuple[bool, str], int] = {}
    keyed = []
    for job in sorted(jobs, key=_age):
        waiting = job.state == JobState.PENDING
        n = turn.get((waiting, job.tenant), 0)
        turn[(waiting, job.tenant)] = n + 1
        keyed.append(((waiting, n, *_age(job)), job))
    return [job for _, job in sorted(keyed, key=lambda kv: kv[0])]
