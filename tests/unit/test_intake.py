"""Job intake: admission of registered tenants with their quotas, idempotency per message id, and the hostile cases,
on in-memory adapters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ringfleet.contracts import JobCancelled
from ringfleet.core.jobs import JobState
from ringfleet.core.ports import SystemClock
from ringfleet.intake.quotas import (
    TenantQuota,
    TenantRegistry,
    Usage,
    admit_job,
    check_min_workers_budget,
    claim_of,
    gpus_per_instance,
    held_by,
    over_quota,
)
from ringfleet.intake.service import IntakeService
from tests.builders import catalog, spec
from tests.doubles import InMemoryJobRepository, RecordingCommandPublisher

pytestmark = pytest.mark.unit

#: The tenants the tests' jobs belong to (tests.builders.spec: acme), and the one that tries others' jobs.
REGISTERED = TenantRegistry.register("acme", "globex")


def service(
    tenants: TenantRegistry = REGISTERED,
) -> tuple[IntakeService, list[dict[str, Any]], RecordingCommandPublisher]:
    events: list[dict[str, Any]] = []
    publisher = RecordingCommandPublisher()
    svc = IntakeService(
        jobs=InMemoryJobRepository(SystemClock()),
        publisher=publisher,
        put_events=events.extend,
        tenants=tenants,
        clock=SystemClock(),
    )
    return svc, events, publisher


def test_an_admitted_job_is_pending_and_announced_once_even_when_its_message_comes_twice() -> None:
    svc, events, _ = service()
    message = spec("job-1", min_workers=2, max_workers=4)
    assert svc.on_submitted(message).outcome == "admitted"
    assert svc.on_submitted(message).outcome == "duplicate"
    job = svc.jobs.get("job-1")
    assert job is not None and job.state == JobState.PENDING
    assert [e["DetailType"] for e in events] == ["Job Admitted"]
    assert json.loads(events[0]["Detail"])["max_workers"] == 4


def test_a_job_over_the_tenants_gpu_quota_is_recorded_failed_with_the_reason_and_never_announced() -> None:
    svc, events, _ = service(TenantRegistry.register("acme", quota=TenantQuota(max_gpus=6)))
    assert svc.on_submitted(spec("job-1", max_workers=4)).outcome == "admitted"
    outcome = svc.on_submitted(spec("job-2", max_workers=4))
    assert outcome.outcome == "rejected" and "quota" in outcome.reason
    job = svc.jobs.get("job-2")
    assert job is not None and job.state == JobState.FAILED and "quota" in job.incidents[-1].detail
    assert job.failure == outcome.reason  # what `ringfleet status` shows for it
    assert [e["DetailType"] for e in events] == ["Job Admitted", "Job Rejected"]
    assert json.loads(events[1]["Detail"])["reason"] == outcome.reason


def test_reusing_another_tenants_job_id_is_rejected_and_leaves_that_job_alone() -> None:
    svc, _, _ = service()
    svc.on_submitted(spec("job-1"))
    intruder = spec("job-1").model_copy(update={"tenant": "globex"})
    assert svc.on_submitted(intruder).outcome == "rejected"
    job = svc.jobs.get("job-1")
    assert job is not None and job.tenant == "acme" and job.state == JobState.PENDING


def test_only_the_owner_can_cancel_and_the_workers_are_told_to_stop() -> None:
    svc, events, publisher = service()
    svc.on_submitted(spec("job-1"))
    assert svc.on_cancelled(JobCancelled(tenant="globex", job_id="job-1", reason="x")).outcome == "rejected"
    job = svc.jobs.get("job-1")
    assert job is not None and job.state == JobState.PENDING
    assert svc.on_cancelled(JobCancelled(tenant="acme", job_id="job-1", reason="done")).outcome == "cancelled"
    assert svc.on_cancelled(JobCancelled(tenant="acme", job_id="job-1", reason="done")).outcome == "duplicate"
    job = svc.jobs.get("job-1")
    assert job is not None and job.state == JobState.CANCELLED and not job.outbox
    assert [c.type for c in publisher.published] == ["Stop"]
    assert [e["DetailType"] for e in events] == ["Job Admitted", "Job Finished"]


def test_a_job_asking_for_instance_types_the_market_does_not_know_is_rejected_with_the_known_ones() -> None:
    # given intake that knows the instance catalog's types (with their on-demand $/h)
    events: list[dict[str, Any]] = []
    svc = IntakeService(
        jobs=InMemoryJobRepository(SystemClock()),
        publisher=RecordingCommandPublisher(),
        put_events=events.extend,
        tenants=REGISTERED,
        clock=SystemClock(),
        catalog=lambda: catalog({"g5.xlarge": 1.006, "g6.xlarge": 0.805}),
    )
    # when a job asks for one it knows and one it does not
    message = spec("job-1").model_copy(update={"instance_types": ["g5.xlarge", "p9.mega"]})
    outcome = svc.on_submitted(message)
    # then it is rejected at once, naming the unknown type and the known ones, instead of staying PENDING for ever
    assert outcome.outcome == "rejected"
    assert "p9.mega" in outcome.reason and "g5.xlarge, g6.xlarge" in outcome.reason
    job = svc.jobs.get("job-1")
    assert job is not None and job.state == JobState.FAILED
    assert job.incidents[-1].cause == "rejected"  # a `rejected` event in `ringfleet events`
    # never admitted, so the scaler never counts it
    assert [e["DetailType"] for e in events] == ["Job Rejected"]


def test_a_job_of_an_unregistered_tenant_is_rejected_saying_how_to_register_and_stores_nothing() -> None:
    svc, events, _ = service(TenantRegistry.register("globex"))
    # when acme, not registered, submits a job (twice: a redelivery)
    for _ in range(2):
        outcome = svc.on_submitted(spec("job-1"))
        # then it is rejected, saying acme is not registered and how to register it
        assert outcome.outcome == "rejected"
        assert "tenant 'acme' is not registered" in outcome.reason
        assert "TenantRegistry" in outcome.reason and "ringfleet local up --tenant acme" in outcome.reason
    # and nothing is stored; the bus hears "Job Rejected" with the reason, never "Job Admitted"
    assert svc.jobs.get("job-1") is None and svc.jobs.list_by_tenant("acme") == []
    assert [e["DetailType"] for e in events] == ["Job Rejected", "Job Rejected"]
    detail = json.loads(events[0]["Detail"])
    assert (detail["tenant"], detail["job_id"]) == ("acme", "job-1") and "not registered" in detail["reason"]


def test_the_registry_reads_each_tenant_with_its_quotas_and_refuses_a_bad_one() -> None:
    registry = TenantRegistry.from_json('{"acme": {"max_gpus": 8}, "globex": {}}')
    assert registry.of("acme") == TenantQuota(max_gpus=8) and registry.of("globex") == TenantQuota()
    assert registry.of("initech") is None
    assert TenantRegistry.from_json(registry.to_json()) == registry
    assert TenantRegistry.from_json("").tenants == {}  # a stack with nobody registered admits nothing
    for bad, why in [
        ("[1]", "must map each tenant"),
        ('{"acme": 5}', "needs an object of quotas"),
        ('{"acme": {"gpus": 5}}', "quotas: max_gpus, max_usd_per_hour"),
        ('{"acme": {"max_gpus": -1}}', "max_gpus must be"),
        ("{acme", "is not JSON"),
    ]:
        with pytest.raises(ValueError, match=why):
            TenantRegistry.from_json(bad)


def test_a_job_alone_is_checked_against_the_whole_quota_and_its_minimum_against_its_budget() -> None:
    registry = TenantRegistry.register("acme", quota=TenantQuota(max_gpus=8, max_usd_per_hour=10))
    prices = {"g5.xlarge": 1.006, "g4dn.xlarge": 0.526, "g6.xlarge": 0.805}
    message = spec("job-1", min_workers=2, max_workers=4)  # 1 GPU per worker, $2.50/h, g5/g4dn/g6
    # a job that fits on its own is admitted as far as the job alone goes (the tenant's other jobs: the transaction)
    assert admit_job(message, registry, catalog(prices)) is None
    # more GPUs than the whole quota, or a budget over it
    assert admit_job(spec("job-1", max_workers=9), registry) == (
        "quota: the job asks for up to 9 GPUs (9 workers x 1); tenant acme may hold at most 8"
    )
    rich = message.model_copy(update={"budget_usd_per_hour": 12.0})
    assert admit_job(rich, registry) == "quota: the job budgets $12.00/h; tenant acme may budget at most $10.00/h"
    # a minimum whose cheapest on-demand cost is over the budget: both numbers named
    floor = spec("job-1", min_workers=5, max_workers=8)
    reason = check_min_workers_budget(floor, prices)
    assert reason is not None and reason.startswith("budget: min_workers 5 cost at least $2.63/h on demand")
    assert "5 x $0.53/h for g4dn.xlarge" in reason and "budget of $2.50/h" in reason
    assert check_min_workers_budget(spec("job-1", min_workers=4, max_workers=8), prices) is None  # $2.10/h
    assert check_min_workers_budget(floor, {}) is None  # unpriced types: check_instance_types speaks for them


def test_a_claim_leaves_room_for_the_others_and_a_refusal_names_the_numbers() -> None:
    quota = TenantQuota(max_gpus=12, max_usd_per_hour=5)
    claim = claim_of(spec("job-1", max_workers=4), quota)
    assert claim.wants == held_by(spec("job-1", max_workers=4)) == Usage(4, 2.5)
    assert (claim.gpus_room, claim.usd_room) == (8, 2.5)
    assert over_quota(claim, Usage(10, 1.0)) == "quota: tenant acme would hold 14 GPUs with this job; its quota is 12"
    assert over_quota(claim, Usage(2, 3.0)) == (
        "quota: tenant acme's jobs would budget $5.50/h with this one; its quota is $5.00/h"
    )


def test_a_submission_over_what_is_left_changes_no_usage_and_an_ended_job_frees_its_share() -> None:
    svc, _, _ = service(TenantRegistry.register("acme", quota=TenantQuota(max_gpus=8, max_usd_per_hour=100)))
    assert svc.on_submitted(spec("job-1", max_workers=6)).outcome == "admitted"
    assert svc.on_submitted(spec("job-2", max_workers=4)).outcome == "rejected"
    assert svc.jobs.usage("acme") == Usage(6, 2.5)  # type: ignore[attr-defined]
    assert svc.on_cancelled(JobCancelled(tenant="acme", job_id="job-1", reason="x")).outcome == "cancelled"
    assert svc.jobs.usage("acme") == Usage()  # type: ignore[attr-defined]
    assert svc.on_submitted(spec("job-3", max_workers=8)).outcome == "admitted"


def test_intake_with_the_catalogs_prices_knows_its_types_from_them() -> None:
    svc = IntakeService(
        jobs=InMemoryJobRepository(SystemClock()),
        publisher=RecordingCommandPublisher(),
        put_events=lambda entries: None,
        tenants=REGISTERED,
        clock=SystemClock(),
        catalog=lambda: catalog({"g5.xlarge": 1.006, "g4dn.xlarge": 0.526, "g6.xlarge": 0.805}),
    )
    unknown = spec("job-1").model_copy(update={"instance_types": ["p9.mega"]})
    assert "unknown instance type(s) p9.mega" in svc.on_submitted(unknown).reason
    outcome = svc.on_submitted(spec("job-2", min_workers=5, max_workers=8))
    assert outcome.outcome == "rejected" and "min_workers 5 cost at least $2.63/h" in outcome.reason


def test_a_job_counts_every_gpu_of_its_largest_instance_type_towards_its_tenants_quota() -> None:
    # given a catalog of a one-GPU and a four-GPU type, and a tenant that may hold 8 GPUs
    types = catalog({"g5.xlarge": 1.006, "g5.12xlarge": 5.672}, gpus={"g5.12xlarge": 4})
    quota = TenantQuota(max_gpus=8, max_usd_per_hour=100)
    registry = TenantRegistry.register("acme", quota=quota)
    both = spec("job-1", min_workers=1, max_workers=2).model_copy(
        update={"instance_types": ["g5.xlarge", "g5.12xlarge"], "budget_usd_per_hour": 20.0}
    )
    # when a job of two workers may run on either: each of its instances may hold four GPUs, one slot each
    assert gpus_per_instance(both, types) == 4 and held_by(both, types) == Usage(8, 20.0)
    assert admit_job(both, registry, types) is None
    # then a third worker is over the quota, and the reason says how it was counted
    assert admit_job(both.model_copy(update={"max_workers": 3}), registry, types) == (
        "quota: the job asks for up to 12 GPUs (3 workers x 4); tenant acme may hold at most 8"
    )
    # a job running fewer slots still holds its instances' every GPU: no other job can use them
    assert held_by(both.model_copy(update={"slots_per_instance": 1}), types).gpus == 8
    # and one on one-GPU types counts one GPU a worker, as it always did (a type not listed: its gpus_per_worker)
    assert held_by(spec("job-2", max_workers=2), types).gpus == 2
    # intake takes that count from the tenant's usage when it admits the job
    svc = IntakeService(
        jobs=InMemoryJobRepository(SystemClock()),
        publisher=RecordingCommandPublisher(),
        put_events=lambda entries: None,
        tenants=registry,
        clock=SystemClock(),
        catalog=lambda: types,
    )
    assert svc.on_submitted(both).outcome == "admitted"
    assert svc.jobs.usage("acme") == Usage(8, 20.0)  # type: ignore[attr-defined]
    small = spec("job-2", max_workers=1).model_copy(update={"instance_types": ["g5.xlarge"]})
    assert "quota: tenant acme would hold 9 GPUs" in svc.on_submitted(small).reason
