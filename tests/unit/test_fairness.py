"""fair_order and what it decides: one tenant's many jobs, or job ids that sort first, never starve another tenant."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ringfleet.core.jobs import Job, JobState
from ringfleet.scaling.fairness import fair_order
from ringfleet.scaling.placement import FreeInstance, plan_placement
from tests.builders import instance, later, running_job

pytestmark = pytest.mark.unit


def waiting(job_id: str, tenant: str, minute: int, *, workers: int = 1) -> Job:
    job, _ = running_job(job_id, members=0, generation=0, min_workers=workers, max_workers=workers)
    spec = job.spec.model_copy(update={"tenant": tenant})
    return replace(job, tenant=tenant, spec=spec, state=JobState.PENDING, members={}, created_at=later(minute))


def test_tenants_take_turns_each_oldest_first_and_running_jobs_come_before_waiting_ones() -> None:
    # given tenant aaa's three jobs, named to sort first and submitted first, and zzz's two, submitted later
    flood = [waiting(f"aaa-{n}", "aaa", n) for n in range(3)]
    late = [waiting("zzz-1", "zzz", 10), waiting("zzz-0", "zzz", 11)]
    running = replace(waiting("mmm-0", "mmm", 20), state=JobState.RUNNING)
    # when the scaler orders them (in whatever order the index listed them)
    ordered = [j.job_id for j in fair_order([*reversed(late), running, *flood])]
    # then the running job first, then each tenant's oldest, then each one's second oldest, ...
    assert ordered == ["mmm-0", "aaa-0", "zzz-1", "aaa-1", "zzz-0", "aaa-2"]
    # and the order depends on the jobs, not on how they were listed
    assert [j.job_id for j in fair_order(list(reversed([*flood, *late, running])))] == ordered


def test_free_instances_go_round_the_tenants_when_one_tenant_floods_the_queue() -> None:
    # given tenant aaa's 4 one-worker jobs waiting since T0, and zzz's one job waiting since a minute later
    jobs = [waiting(f"aaa-{n}", "aaa", 0) for n in range(4)] + [waiting("zzz-0", "zzz", 1)]
    free = [FreeInstance(instance(n), "g5.xlarge", "spot:g5.xlarge:us-east-1a") for n in (1, 2)]
    # when two instances are free
    placement = plan_placement(jobs, free, later(2))
    # then zzz's job starts on one of them, though all of aaa's are older and sort first
    assert sorted(s.job.job_id for s in placement.starts) == ["aaa-0", "zzz-0"]
