"""services/job_intake: the Amazon MQ samples of events/ admit and cancel a job in the jobs table; a cancel tells the
workers to stop; the same message twice changes nothing more; an invalid message is rejected with its reason."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ringfleet.core.jobs import JobState
from tests.functional.handlers import SAMPLE_JOB, CommandTap, Handler, handler_of, sample

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def intake(broker_url: str) -> Iterator[Handler]:
    with handler_of("job_intake", broker_url) as handler:
        yield handler


def with_body(event: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The Amazon MQ sample with its one message's JSON body changed."""
    event = json.loads(json.dumps(event))
    (messages,) = event["rmqMessagesByQueue"].values()
    body = json.loads(base64.b64decode(messages[0]["data"]))
    body.update(changes)
    messages[0]["data"] = base64.b64encode(json.dumps(body).encode()).decode()
    return event


def test_a_submitted_job_is_admitted_once_and_cancelled_once_with_one_stop(
    intake: Handler, commands: CommandTap
) -> None:
    # when the sample JobSubmitted arrives, twice (a redelivery)
    first = intake(sample("mq_job_submitted.json"))
    after_first = intake.tables()
    second = intake(sample("mq_job_submitted.json"))
    # then the job is PENDING as submitted, and the second delivery changed nothing
    assert [o["outcome"] for o in first["outcomes"]] == ["admitted"]
    assert [o["outcome"] for o in second["outcomes"]] == ["duplicate"]
    job = intake.jobs.get(SAMPLE_JOB)
    assert job is not None and job.state is JobState.PENDING and job.tenant == "acme"
    assert (job.spec.min_workers, job.spec.max_workers) == (2, 4)
    assert intake.tables() == after_first
    # when the sample JobCancelled arrives, twice
    cancelled = intake(sample("mq_job_cancelled.json"))
    after_cancel = intake.tables()
    again = intake(sample("mq_job_cancelled.json"))
    # then the job is CANCELLED and its workers got one Stop, whichever delivery
    assert [o["outcome"] for o in cancelled["outcomes"]] == ["cancelled"]
    assert [o["outcome"] for o in again["outcomes"]] == ["duplicate"]
    job = intake.jobs.get(SAMPLE_JOB)
    assert job is not None and job.state is JobState.CANCELLED
    assert intake.tables() == after_cancel
    assert [(c["type"], c["_to"]) for c in commands.drain()] == [("Stop", f"{SAMPLE_JOB}.all")]


def test_an_invalid_message_is_rejected_with_its_reason_and_stores_nothing(intake: Handler) -> None:
    # given the sample JobSubmitted asking for 100,000 workers, as another job
    event = with_body(
        sample("mq_job_submitted.json"),
        job_id="too-big",
        max_workers=100_000,
        message_id="6a1f2b3c-0000-4000-8000-000000000001",
    )
    before = intake.tables()
    # when it arrives
    result = intake(event)
    # then it is rejected, naming the field, and nothing is written
    (outcome,) = result["outcomes"]
    assert outcome["outcome"] == "rejected" and "max_workers" in outcome["reason"]
    assert intake.jobs.get("too-big") is None
    assert intake.tables() == before
