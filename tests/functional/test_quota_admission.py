"""Quotas that hold under concurrency, on template.yaml's jobs table: the job's put and its tenant's usage count in one
transaction, the share given back once by the write that ends the job (intake against the local moto server)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any
from uuid import uuid4

import boto3
import pytest
from ringfleet_local.cloud import LocalCloud

from ringfleet.adapters.dynamodb import USAGE_KEY_PREFIX, DynamoDbJobRepository
from ringfleet.contracts import JobCancelled, JobSubmitted
from ringfleet.core.jobs import JobState
from ringfleet.core.ports import SystemClock
from ringfleet.intake.quotas import TenantQuota, TenantRegistry
from ringfleet.intake.service import IntakeService
from tests.builders import catalog, spec
from tests.doubles import RecordingCommandPublisher

pytestmark = pytest.mark.functional


@pytest.fixture
def table(aws: LocalCloud) -> Any:
    return boto3.resource("dynamodb").Table(str(aws.ctx.resolve({"Ref": "JobsTable"})))


@pytest.fixture
def tenant() -> str:
    # The session's tables are shared by the tests: a tenant of each test's own keeps its usage apart.
    return f"quota-{uuid4().hex[:10]}"


def intake(table: Any, tenant: str, quota: TenantQuota, **kwargs: Any) -> IntakeService:
    return IntakeService(
        jobs=DynamoDbJobRepository(table.name, clock=SystemClock(), boto3_resource=boto3.resource("dynamodb")),
        publisher=RecordingCommandPublisher(),
        put_events=lambda entries: None,
        tenants=TenantRegistry.register(tenant, quota=quota),
        clock=SystemClock(),
        **kwargs,
    )


def job_of(tenant: str, job_id: str, *, workers: int, budget: float = 1.0) -> JobSubmitted:
    message = spec(job_id, min_workers=1, max_workers=workers)  # one GPU per worker
    return message.model_copy(update={"tenant": tenant, "budget_usd_per_hour": budget})


def usage(table: Any, tenant: str) -> tuple[int, float]:
    item = table.get_item(Key={"job_id": USAGE_KEY_PREFIX + tenant}, ConsistentRead=True).get("Item") or {}
    return int(item.get("gpus", 0)), float(item.get("usd_per_hour", 0))


def test_two_submissions_racing_for_the_last_of_a_quota_admit_exactly_one(table: Any, tenant: str) -> None:
    # given a tenant with 12 GPUs of quota, 4 of them held by a running job
    svc = intake(table, tenant, TenantQuota(max_gpus=12, max_usd_per_hour=100))
    assert svc.on_submitted(job_of(tenant, f"{tenant}-first", workers=4)).outcome == "admitted"
    for round_ in range(3):
        # when two jobs of 8 GPUs each are submitted at the same moment (two intake invocations, each its own client)
        racers = [intake(table, tenant, TenantQuota(max_gpus=12, max_usd_per_hour=100)) for _ in range(2)]
        messages = [job_of(tenant, f"{tenant}-r{round_}-{n}", workers=8) for n in range(2)]
        start = threading.Barrier(2)

        def submit(n: int, racers: Any = racers, messages: Any = messages, start: Any = start) -> str:
            start.wait()
            return str(racers[n].on_submitted(messages[n]).outcome)

        with ThreadPoolExecutor(2) as pool:
            outcomes = sorted(pool.map(submit, range(2)))
        # then exactly one is admitted, the other rejected for the quota, naming the numbers
        assert outcomes == ["admitted", "rejected"]
        assert usage(table, tenant) == (12, 2.0)
        stored = [svc.jobs.get(m.job_id) for m in messages]
        admitted = [j for j in stored if j is not None and j.state == JobState.PENDING]
        rejected = [j for j in stored if j is not None and j.state == JobState.FAILED]
        assert len(admitted) == 1 and len(rejected) == 1
        assert rejected[0].failure == f"quota: tenant {tenant} would hold 20 GPUs with this job; its quota is 12"
        # and the admitted one ends (cancelled), giving its 8 GPUs back for the next round
        cancel = JobCancelled(tenant=tenant, job_id=admitted[0].job_id, reason="next round")
        assert svc.on_cancelled(cancel).outcome == "cancelled"
        assert usage(table, tenant) == (4, 1.0)


def test_ending_a_job_frees_its_quota_once_even_when_the_end_is_handled_twice(table: Any, tenant: str) -> None:
    svc = intake(table, tenant, TenantQuota(max_gpus=8, max_usd_per_hour=3))
    # given two admitted jobs holding all 8 GPUs of the tenant's quota
    assert svc.on_submitted(job_of(tenant, f"{tenant}-a", workers=4, budget=1.5)).outcome == "admitted"
    assert svc.on_submitted(job_of(tenant, f"{tenant}-b", workers=4, budget=1.5)).outcome == "admitted"
    assert usage(table, tenant) == (8, 3.0)
    before = svc.jobs.get(f"{tenant}-a")
    assert before is not None
    # when job a is cancelled by two deliveries of the same cancel at the same moment
    cancel = JobCancelled(tenant=tenant, job_id=f"{tenant}-a", reason="done")
    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(pool.map(lambda _: svc.on_cancelled(cancel).outcome, range(2)))
    assert outcomes == ["cancelled", "duplicate"]
    # and a recovery decided from the job as it was before (a late event) tries to end it FAILED as well
    late = svc.jobs.save(replace(before.moved_to(JobState.FAILED), failure="late"), decided_from=before)
    # then the late end changes nothing, and the 4 GPUs and $1.50/h of job a came back once, not twice
    assert not late
    job = svc.jobs.get(f"{tenant}-a")
    assert job is not None and job.state == JobState.CANCELLED
    assert usage(table, tenant) == (4, 1.5)
    # so one job of 4 GPUs fits again, and a second does not
    assert svc.on_submitted(job_of(tenant, f"{tenant}-c", workers=4, budget=1.5)).outcome == "admitted"
    outcome = svc.on_submitted(job_of(tenant, f"{tenant}-d", workers=4, budget=1.5))
    assert outcome.outcome == "rejected" and "quota is 8" in outcome.reason
    assert usage(table, tenant) == (8, 3.0)


def test_a_rejected_job_changes_no_usage_and_a_job_without_a_share_gives_nothing_back(table: Any, tenant: str) -> None:
    svc = intake(table, tenant, TenantQuota(max_gpus=8, max_usd_per_hour=5))
    assert svc.on_submitted(job_of(tenant, f"{tenant}-a", workers=4, budget=4)).outcome == "admitted"
    # when a job that would take the tenant past its $/h quota is submitted
    outcome = svc.on_submitted(job_of(tenant, f"{tenant}-b", workers=2, budget=2))
    # then it is rejected naming the numbers, and the usage is as it was
    assert outcome.outcome == "rejected"
    assert outcome.reason == f"quota: tenant {tenant}'s jobs would budget $6.00/h with this one; its quota is $5.00/h"
    assert usage(table, tenant) == (4, 4.0)
    # and the rejected job's record (FAILED, what `ringfleet status` shows) holds no share: nothing to give back
    rejected = svc.jobs.get(f"{tenant}-b")
    assert rejected is not None and rejected.state == JobState.FAILED
    # a job created without a share (admitted before shares were counted) ends without touching the usage
    legacy = replace(rejected, job_id=f"{tenant}-legacy", state=JobState.PENDING, revision=0)
    assert svc.jobs.create(legacy)
    stored = svc.jobs.get(legacy.job_id)
    assert stored is not None and svc.jobs.save(stored.moved_to(JobState.FAILED), decided_from=stored)
    assert usage(table, tenant) == (4, 4.0)


def test_a_job_whose_minimum_its_budget_cannot_pay_on_demand_is_rejected_naming_both(table: Any, tenant: str) -> None:
    # given the catalog's on-demand prices (one GPU per type)
    prices = {"g5.xlarge": 1.006, "g4dn.xlarge": 0.526, "g6.xlarge": 0.805}
    svc = intake(table, tenant, TenantQuota(), catalog=lambda: catalog(prices))
    # when a job asks for at least 4 workers on a $2/h budget (4 x $0.526/h = $2.10/h at the cheapest)
    message = spec(f"{tenant}-big", min_workers=4, max_workers=8).model_copy(
        update={"tenant": tenant, "budget_usd_per_hour": 2.0}
    )
    outcome = svc.on_submitted(message)
    # then it is rejected naming both numbers, and holds nothing
    assert outcome.outcome == "rejected"
    assert "$2.10/h" in outcome.reason and "$2.00/h" in outcome.reason and "g4dn.xlarge" in outcome.reason
    assert usage(table, tenant) == (0, 0.0)
    # while 3 workers fit ($1.58/h)
    fits = message.model_copy(update={"job_id": f"{tenant}-fits", "min_workers": 3})
    assert svc.on_submitted(fits).outcome == "admitted"
