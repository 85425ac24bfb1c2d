"""services/worker_events: the Amazon MQ samples of events/ (Heartbeat, CheckpointCompleted, WorkerFailed) about the
sample job's generation 3 change its nodes and job as a user would see in `ringfleet status`; each message handled
twice changes nothing more and sends no command twice; an invalid message goes to the DLQ with its reason, and its
batch's valid messages are applied once."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from ringfleet.contracts.broker import REASON_HEADER, SENDER_HEADER, WORKER_EVENTS_QUEUE
from ringfleet.core.jobs import JobState
from ringfleet.core.nodes import NodeState
from tests.conftest import ROOT
from tests.functional.handlers import (
    MEMBERS,
    SAMPLE_JOB,
    CommandTap,
    Handler,
    drain_dead_letters,
    handler_of,
    mq_batch,
    sample,
    seed_sample_ring,
    twice,
)

pytestmark = [pytest.mark.functional, pytest.mark.timeout(120)]

#: A little before the samples were sent: the members were heard from then.
MISSING_INSTANCE = "6a1f2b3c-0000-4000-8000-000000000002"
FROM_APP = "6a1f2b3c-0000-4000-8000-000000000003"
UNSTAMPED = "6a1f2b3c-0000-4000-8000-000000000004"


@pytest.fixture(scope="module")
def handler(broker_url: str) -> Iterator[Handler]:
    with handler_of("worker_events", broker_url) as loaded:
        yield loaded


@pytest.fixture
def worker_events(handler: Handler) -> Handler:
    """The sample job RUNNING at generation 3 on the samples' three instances, last heard from at HEARD."""
    return seed_sample_ring(handler)


def test_a_heartbeat_records_the_members_step_and_time(worker_events: Handler, commands: CommandTap) -> None:
    # when the sample heartbeat of rank 1 arrives (twice)
    assert twice(worker_events, sample("mq_heartbeat.json")) == {"accepted": 1, "dead_lettered": 0}
    # then its node shows the step and when it was sent, and nothing is sent to the workers
    node = worker_events.nodes.get(MEMBERS[1])
    assert node is not None and node.state is NodeState.ACTIVE
    assert node.last_step == 118
    assert node.last_heartbeat == datetime(2025, 6, 2, 14, 5, 30, 250000, tzinfo=UTC)
    assert commands.drain() == []


def test_an_emergency_checkpoint_is_an_incident_of_the_job(worker_events: Handler, commands: CommandTap) -> None:
    # when the sample CheckpointCompleted (an emergency checkpoint at step 120) arrives (twice)
    twice(worker_events, sample("mq_checkpoint_completed.json"))
    # then the job, still running its generation, shows it once among its incidents; no command goes out
    job = worker_events.jobs.get(SAMPLE_JOB)
    assert job is not None and job.state is JobState.RUNNING and job.generation == 3
    assert [(i.cause, i.step) for i in job.incidents] == [("emergency-checkpoint", 120)]
    assert commands.drain() == []


def test_a_failed_worker_leaves_the_ring_and_the_others_reconfigure_once(
    worker_events: Handler, commands: CommandTap
) -> None:
    # when the sample WorkerFailed of rank 2 (CUDA out of memory) arrives (twice)
    twice(worker_events, sample("mq_worker_failed.json"))
    # then its node is lost and the two others form generation 4
    job = worker_events.jobs.get(SAMPLE_JOB)
    assert job is not None and job.state is JobState.RUNNING
    assert job.generation == 4 and job.members == {MEMBERS[0]: 0, MEMBERS[1]: 1}
    assert "CUDA out of memory" in job.incidents[0].detail
    lost = worker_events.nodes.get(MEMBERS[2])
    assert lost is not None and lost.state is NodeState.LOST
    # and the workers were told once
    (reconfigure,) = commands.drain()
    assert reconfigure["type"] == "Reconfigure" and reconfigure["_to"] == f"{SAMPLE_JOB}.all"
    assert (reconfigure["generation"], reconfigure["world_size"]) == (4, 2)
    assert reconfigure["ranks"] == {MEMBERS[0]: 0, MEMBERS[1]: 1}


def test_invalid_messages_go_to_the_dlq_with_their_reason_and_the_valid_one_is_applied_once(
    worker_events: Handler, broker_url: str
) -> None:
    drain_dead_letters(broker_url, WORKER_EVENTS_QUEUE)
    # given a batch of the sample heartbeat, a heartbeat without an instance (with a header of its publisher's), a
    # body that is no JSON, a heartbeat a tenant's app user sent, and one sent without user_id (which RabbitMQ then
    # checks against nobody: anyone could have sent it)
    trace = {"bytes": list(b"trace-1")}
    event = mq_batch(
        "mq_heartbeat.json",
        {"instance_id": None, "message_id": MISSING_INSTANCE, "__properties__": {"headers": {"trace": trace}}},
        b"not json",
        {"step": 999, "message_id": FROM_APP, "__properties__": {"userId": "app-acme"}},
        {"step": 998, "message_id": UNSTAMPED, "__properties__": {"userId": None}},
    )
    # when it arrives, twice (a redelivery), then the batch succeeds both times: the valid heartbeat applied, the
    # four others dead-lettered
    result = twice(worker_events, event)
    assert result == {"accepted": 1, "dead_lettered": 4}
    node = worker_events.nodes.get(MEMBERS[1])
    assert node is not None and node.last_step == 118
    # and the DLQ holds each once, as sent, with why it was refused and who sent it
    letters = drain_dead_letters(broker_url, WORKER_EVENTS_QUEUE)
    assert len(letters) == 4
    (missing, headers), (garbage, garbage_headers), (forged, forged_headers), (unstamped, unstamped_headers) = letters
    assert json.loads(unstamped)["step"] == 998 and "no user_id" in unstamped_headers[REASON_HEADER]
    assert json.loads(missing)["message_id"] == MISSING_INSTANCE and headers["trace"] == "trace-1"
    assert "instance_id" in headers[REASON_HEADER]
    assert garbage == b"not json" and "invalid message" in garbage_headers[REASON_HEADER]
    assert json.loads(forged)["step"] == 999 and forged_headers[SENDER_HEADER] == "app-acme"
    assert "app user" in forged_headers[REASON_HEADER]


def test_rank_zeros_goodput_becomes_the_jobs_goodput_metric(
    worker_events: Handler, capsys: pytest.CaptureFixture[str]
) -> None:
    # given a batch with the sample heartbeat of rank 1 (goodput 0.98) and one of rank 0 saying 0.93
    message_id = "7e57c0de-0000-4000-8000-000000000001"
    event = mq_batch(
        "mq_heartbeat.json",
        {
            "rank": 0,
            "instance_id": MEMBERS[0],
            "goodput": 0.93,
            "message_id": message_id,
            "__properties__": {"messageId": message_id},
        },
    )
    capsys.readouterr()
    # when it arrives
    assert worker_events(event) == {"accepted": 2, "dead_lettered": 0}
    # then one Goodput metric is published, for the job, with rank 0's value (rank 0 speaks for the ring)
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"Goodput"' in line]
    assert [(m["job_id"], m["Goodput"]) for m in emitted] == [(SAMPLE_JOB, [0.93])]
    (metric_set,) = emitted[0]["_aws"]["CloudWatchMetrics"]
    assert metric_set["Namespace"] == "ringfleet" and sorted(metric_set["Dimensions"][0]) == ["job_id", "service"]


def _instance_idle() -> dict[str, Any]:
    """The Amazon MQ sample carrying the sample InstanceIdle (events/messages/instance_idle.json) of rank 1's
    instance instead of its heartbeat."""
    event = sample("mq_heartbeat.json")
    (messages,) = event["rmqMessagesByQueue"].values()
    body = (ROOT / "events/messages/instance_idle.json").read_bytes()
    messages[0]["data"] = base64.b64encode(body).decode()
    messages[0]["basicProperties"].update(type="InstanceIdle", messageId=json.loads(body)["message_id"])
    return event


def test_an_idle_agent_frees_its_instance_once_its_job_is_over_and_never_a_live_members(
    worker_events: Handler, commands: CommandTap
) -> None:
    # given the sample job running: its rank 1's agent says (twice) it runs no job (it booted again)
    assert twice(worker_events, _instance_idle()) == {"accepted": 1, "dead_lettered": 0}
    # then nothing changes: a live job's member is the heartbeat sweep's to judge, never freed by what it says
    node = worker_events.nodes.get(MEMBERS[1])
    assert node is not None and node.state is NodeState.ACTIVE and node.job_id == SAMPLE_JOB
    # given the job ended and released its nodes (no other job may be placed on them yet)
    job = worker_events.jobs.get(SAMPLE_JOB)
    assert job is not None
    ended = replace(job, state=JobState.SUCCEEDED)
    released = [replace(n, state=NodeState.RELEASED, rank=None) for n in worker_events.nodes.list_by_job(SAMPLE_JOB)]
    worker_events.reset()
    worker_events.seed(ended, released)
    # when rank 1's agent confirms it runs nothing of it (twice: a redelivery)
    assert twice(worker_events, _instance_idle()) == {"accepted": 1, "dead_lettered": 0}
    # then its instance is free (LOST: the scaler places another job on it); the others wait for their own agents
    states = {n.instance_id: n.state for n in worker_events.nodes.list_by_job(SAMPLE_JOB)}
    assert states == {MEMBERS[0]: NodeState.RELEASED, MEMBERS[1]: NodeState.LOST, MEMBERS[2]: NodeState.RELEASED}
    assert commands.drain() == []
