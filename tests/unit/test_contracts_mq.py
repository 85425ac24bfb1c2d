"""The ``aws:rmq`` event of the Amazon MQ event source: its envelope, and bodies that are not what they claim."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parser import parse
from pydantic import ValidationError

from ringfleet.contracts import (
    AppMessage,
    Heartbeat,
    JobCancelled,
    JobSubmitted,
    RabbitMqEnvelope,
    RabbitMqEvent,
    WorkerMessage,
    parse_rmq_messages,
)
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

EVENTS = ROOT / "events"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def with_bodies(event: dict[str, Any], *bodies: bytes | str, queue: str = "ringfleet.jobs::/") -> dict[str, Any]:
    """The event with its one message repeated once per body (``str``: put in ``data`` as it is)."""
    [template] = [m for ms in event["rmqMessagesByQueue"].values() for m in ms]
    messages = []
    for body in bodies:
        m = copy.deepcopy(template)
        m["data"] = body if isinstance(body, str) else base64.b64encode(body).decode()
        messages.append(m)
    return {**event, "rmqMessagesByQueue": {queue: messages}}


def test_a_batch_from_both_queues_parses_in_order() -> None:
    # given one aws:rmq event with messages from the jobs queue and the worker-events queue
    jobs, workers = load("mq_job_submitted.json"), load("mq_heartbeat.json")
    event = {**jobs, "rmqMessagesByQueue": {**jobs["rmqMessagesByQueue"], **workers["rmqMessagesByQueue"]}}
    # when it is parsed
    parsed = RabbitMqEvent.model_validate(event)
    messages = parse_rmq_messages(event)
    # then each message is decoded, in the order Lambda listed them, with its queue
    assert [q for q, _ in parsed.messages()] == ["ringfleet.jobs", "ringfleet.worker-events"]
    assert [type(m) for m in messages] == [JobSubmitted, Heartbeat]


def test_the_powertools_envelope_yields_the_bodies() -> None:
    parsed = parse(event=load("mq_heartbeat.json"), model=Heartbeat, envelope=RabbitMqEnvelope)
    assert isinstance(parsed, list)
    assert [m.job_id for m in parsed if isinstance(m, Heartbeat)] == ["digits-demo"]


def test_a_redelivered_message_is_marked() -> None:
    event = load("mq_job_cancelled.json")
    event["rmqMessagesByQueue"]["ringfleet.jobs::/"][0]["redelivered"] = True
    [(_, message)] = RabbitMqEvent.model_validate(event).messages()
    assert message.redelivered


def test_a_message_published_twice_parses_to_the_same_message_id() -> None:
    # given the same JobCancelled delivered twice in one batch (at-least-once delivery)
    body = (EVENTS / "messages" / "job_cancelled.json").read_bytes()
    first, second = parse_rmq_messages(with_bodies(load("mq_job_cancelled.json"), body, body), AppMessage)
    # then both carry the same message_id, which is what a consumer deduplicates on
    assert isinstance(first, JobCancelled) and first == second and first.message_id == second.message_id


def test_a_body_that_is_not_base64_names_the_data_field() -> None:
    event = with_bodies(load("mq_job_submitted.json"), "{not base64}")
    with pytest.raises(ValidationError) as exc:
        RabbitMqEvent.model_validate(event)
    assert "data" in str(exc.value) and "base64" in str(exc.value)


def test_every_invalid_body_is_reported_with_where_it_was() -> None:
    # given a batch with a valid JobSubmitted, one with 100000 workers and a negative budget, and one not JSON
    good = (EVENTS / "messages" / "job_submitted.json").read_bytes()
    absurd = json.loads(good)
    absurd.update(max_workers=100_000, budget_usd_per_hour=-1)
    event = with_bodies(load("mq_job_submitted.json"), good, json.dumps(absurd).encode(), b"\xff\xfe")
    # when job_intake parses it
    with pytest.raises(ValidationError) as exc:
        parse_rmq_messages(event, AppMessage)
    # then one error lists each bad field, located by queue, index and data
    errors = {(".".join(map(str, e["loc"]))): e["type"] for e in exc.value.errors()}
    assert errors == {
        "rmqMessagesByQueue.ringfleet.jobs::/.1.data.JobSubmitted.max_workers": "less_than_equal",
        "rmqMessagesByQueue.ringfleet.jobs::/.1.data.JobSubmitted.budget_usd_per_hour": "greater_than",
        "rmqMessagesByQueue.ringfleet.jobs::/.2.data": "json_invalid",
    }


def test_a_worker_message_on_the_jobs_queue_is_refused_by_type() -> None:
    with pytest.raises(ValidationError) as exc:
        parse_rmq_messages(load("mq_heartbeat.json"), AppMessage)
    assert "Heartbeat" in str(exc.value)
    assert [type(m) for m in parse_rmq_messages(load("mq_heartbeat.json"), WorkerMessage)] == [Heartbeat]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"eventSource": "aws:sqs"}, "eventSource"),
        ({"eventSourceArn": "arn:aws:sqs:us-east-1:123456789012:queue"}, "eventSourceArn"),
        ({"rmqMessagesByQueue": {"ringfleet.jobs": []}}, "rmqMessagesByQueue"),
    ],
)
def test_an_envelope_that_is_not_amazon_mq_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc:
        RabbitMqEvent.model_validate({**load("mq_job_submitted.json"), **change})
    assert field in str(exc.value)
