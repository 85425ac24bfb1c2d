"""Job intake: admission with quotas, idempotency per message id, and the hostile cases, on in-memory adapters."""

from __future__ import annotations

import json
from typing import Any

from ringfleet.contracts import JobCancelled
from ringfleet.core.jobs import JobState
from ringfleet.core.ports import SystemClock
from ringfleet.intake.quotas import Quotas, TenantQuota
from ringfleet.intake.service import IntakeService
from tests.builders import spec
from tests.doubles import InMemoryJobRepository, RecordingCommandPublisher


def service(quotas: Quotas | None = None) -> tuple[IntakeService, list[dict[str, Any]], RecordingCommandPublisher]:
    events: list[dict[str, Any]] = []
    publisher = RecordingCommandPublisher()
    svc = IntakeService(
        jobs=InMemoryJobRepository(SystemClock()),
        publisher=publisher,
        put_events=events.extend,
        quotas=quotas or Quotas(),
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
    svc, events, _ = service(Quotas(default=TenantQuota(max_gpus=6)))
    assert svc.on_submitted(spec("job-1", max_workers=4)).outcome == "admitted"
    outcome = svc.on_submitted(spec("job-2", max_workers=4))
    assert outcome.outcome == "rejected" and "quota" in outcome.reason
    job = svc.jobs.get("job-2")
    assert job is not None and job.state == JobState.FAILED and "quota" in job.incidents[-1].detail
    assert job.failure == outcome.reason  # what `ringfleet status` shows for it
    assert len(events) == 1


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
    # given intake that knows the market's instance types
    events: list[dict[str, Any]] = []
    svc = IntakeService(
        jobs=InMemoryJobRepository(SystemClock()),
        publisher=RecordingCommandPublisher(),
        put_events=events.extend,
        quotas=Quotas(),
        clock=SystemClock(),
        instance_types={"g5.xlarge", "g6.xlarge"},
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
    assert events == []  # never announced, so the scaler never counts it
