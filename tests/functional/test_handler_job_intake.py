"""services/job_intake: the Amazon MQ samples of events/ admit and cancel a job in the jobs table; a cancel tells the
workers to stop; the same message twice changes nothing more; an invalid or refused message goes to the DLQ with its
reason."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ringfleet.contracts.broker import JOBS_QUEUE, REASON_HEADER, SENDER_HEADER
from ringfleet.core.jobs import JobState
from tests.functional.handlers import SAMPLE_JOB, CommandTap, Handler, drain_dead_letters, handler_of, mq_batch, sample

pytestmark = [pytest.mark.functional, pytest.mark.timeout(120)]

FROM_GLOBEX = {"__properties__": {"userId": "app-globex"}}


@pytest.fixture(scope="module")
def intake(broker_url: str) -> Iterator[Handler]:
    with handler_of("job_intake", broker_url) as handler:
        yield handler


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


def test_invalid_and_refused_messages_go_to_the_dlq_and_the_valid_one_is_admitted_once(
    intake: Handler, broker_url: str
) -> None:
    intake.reset()
    drain_dead_letters(broker_url, JOBS_QUEUE)
    # given a batch of the sample JobSubmitted, the same asking for 100,000 workers as another job, and a third job
    # sent by another tenant's app user
    event = mq_batch(
        "mq_job_submitted.json",
        {"job_id": "too-big", "max_workers": 100_000, "message_id": "6a1f2b3c-0000-4000-8000-000000000001"},
        {"job_id": "not-yours", "message_id": "6a1f2b3c-0000-4000-8000-000000000004", **FROM_GLOBEX},
    )
    before = intake.tables()
    # when it arrives, twice (a redelivery)
    first = intake(event)
    after_first = intake.tables()
    second = intake(event)
    # then the batch succeeds: the valid job admitted once, the two others dead-lettered naming what is wrong
    assert [o["outcome"] for o in first["outcomes"]] == ["admitted", "invalid", "refused"]
    assert [o["outcome"] for o in second["outcomes"]] == ["duplicate", "invalid", "refused"]
    assert "max_workers" in first["outcomes"][1]["reason"]
    assert first["outcomes"][1]["dead_lettered"] == "ringfleet.jobs.dlq"
    job = intake.jobs.get(SAMPLE_JOB)
    assert job is not None and job.state is JobState.PENDING
    assert intake.jobs.get("too-big") is None and intake.jobs.get("not-yours") is None
    assert before != after_first and intake.tables() == after_first
    # and the DLQ holds each once, as sent, with its reason and its sender
    (too_big, too_big_headers), (not_yours, not_yours_headers) = drain_dead_letters(broker_url, JOBS_QUEUE)
    assert json.loads(too_big)["max_workers"] == 100_000 and "max_workers" in too_big_headers[REASON_HEADER]
    assert json.loads(not_yours)["job_id"] == "not-yours"
    assert not_yours_headers[SENDER_HEADER] == "app-globex"
    assert "sends for tenant 'globex', not for 'acme'" in not_yours_headers[REASON_HEADER]
