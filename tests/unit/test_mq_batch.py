"""The MQ batch processor both MQ handlers use (``ringfleet.batch.MqBatchProcessor``): an invalid message is
dead-lettered alone, with its reason, and the batch's valid messages are handled all the same."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from aws_lambda_powertools import Logger, Metrics

from ringfleet.batch import InvalidMessage, MqBatchProcessor
from ringfleet.contracts import RabbitMqMessage
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def batch(*bodies: bytes) -> dict[str, Any]:
    """The jobs queue's sample event with one message per body."""
    event = json.loads((ROOT / "events" / "mq_job_submitted.json").read_text())
    ((key, (first, *_)),) = event["rmqMessagesByQueue"].items()
    messages = []
    for body in bodies:
        message = copy.deepcopy(first)
        message["data"] = base64.b64encode(body).decode()
        messages.append(message)
    event["rmqMessagesByQueue"] = {key: messages}
    return event


class DeadLetters:
    """Records what the processor dead-letters instead of publishing it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, str]] = []

    def __call__(self, queue: str, message: RabbitMqMessage, reason: str, *, context: Any) -> None:
        self.sent.append((queue, message.body, reason))


def handle(raw: RabbitMqMessage) -> str:
    if raw.body.startswith(b"bad"):
        raise InvalidMessage(f"invalid message: {raw.body.decode()}", job_id="j-1")
    if raw.body == b"broken":
        raise ConnectionError("broker down")
    return raw.body.decode().upper()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(namespace="ringfleet-test", service="test")


def test_an_invalid_message_is_dead_lettered_once_with_its_reason_and_the_valid_ones_are_handled(
    metrics: Metrics,
) -> None:
    letters = DeadLetters()
    processor = MqBatchProcessor(Logger(service="test"), metrics, dead_letter=letters)
    # given a batch of a valid message, an invalid one and another valid one
    event = batch(b"first", b"bad one", b"third")
    # when it is processed
    records = processor.process(event, handle, context=None)
    # then the valid ones are handled, in order, and the invalid one goes to its queue's DLQ alone, with its reason
    assert [r.result for r in records] == ["FIRST", None, "THIRD"]
    assert letters.sent == [("ringfleet.jobs", b"bad one", "invalid message: bad one")]
    rejected = records[1].rejected
    assert rejected is not None and (rejected.outcome, rejected.job_id) == ("invalid", "j-1")
    assert [r.dead_letter_queue for r in records] == [None, "ringfleet.jobs.dlq", None]
    # and it is counted as rejected
    assert metrics.metric_set["RecordsRejected"]["Value"] == [1.0]


def test_an_infrastructure_error_fails_the_batch_so_the_broker_redelivers_it(metrics: Metrics) -> None:
    letters = DeadLetters()
    processor = MqBatchProcessor(Logger(service="test"), metrics, dead_letter=letters)
    # given a batch whose second message meets a broker that is down
    event = batch(b"first", b"broken")
    # when it is processed, then the error propagates (the whole batch comes back) and nothing is dead-lettered
    with pytest.raises(ConnectionError):
        processor.process(event, handle, context=None)
    assert letters.sent == []


def test_a_dead_letter_that_cannot_be_published_fails_the_batch(metrics: Metrics) -> None:
    def unreachable(queue: str, message: RabbitMqMessage, reason: str, *, context: Any) -> None:
        raise ConnectionError("broker down")

    processor = MqBatchProcessor(Logger(service="test"), metrics, dead_letter=unreachable)
    # given a batch with an invalid message and a broker that cannot take its dead letter, then the batch fails
    with pytest.raises(ConnectionError):
        processor.process(batch(b"bad"), handle, context=None)
