"""Batch processing for the handlers: an SQS record that fails is reported (and logged with its reason), never
lost (``ReportingBatchProcessor``); an invalid Amazon MQ message is dead-lettered by hand, so that it does not take
its batch's valid messages with it (``MqBatchProcessor``, which both MQ handlers use).

An MQ event source has no partial batch response: a handler that raises gets the whole batch back, and the
quorum queue's delivery limit then dead-letters every message of it, the valid ones too. So the MQ handlers handle
each message alone, publish an invalid one (unparseable, from a sender that may not send it, of the wrong type) to
its queue's DLQ themselves with the reason (``AmqpCommandPublisher.dead_letter``), and let the batch succeed; only
a dead letter that cannot be published fails the batch. A batch that comes back (a later message's infrastructure
error) dead-letters each invalid message once: the publish is recorded in the idempotency table, keyed by the queue
and the message's id and body.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

from ringfleet.contracts.broker import dead_letter_queue

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

    from ringfleet.contracts import RabbitMqMessage

__all__ = ["InvalidMessage", "MqBatchProcessor", "MqRecord", "ReportingBatchProcessor"]

T = TypeVar("T")


class ReportingBatchProcessor(BatchProcessor):
    """Reports failed records as ``batchItemFailures`` and logs why each failed.

    Unlike Powertools' default, a batch whose every record fails is also *reported*, not raised: the effect on
    the queue is the same (those records come back, then go to the DLQ after maxReceiveCount), and the
    function's Errors alarm stays for real faults rather than for hostile input.
    """

    def __init__(self, logger: Logger, metrics: Metrics) -> None:
        super().__init__(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        self._logger = logger
        self._metrics = metrics

    def failure_handler(self, record: Any, exception: Any) -> Any:
        exc_type, exc, _ = exception
        self._logger.error(
            "record rejected",
            message_id=getattr(record, "message_id", None),
            error_type=getattr(exc_type, "__name__", str(exc_type)),
            reason=str(exc),
        )
        self._metrics.add_metric(name="RecordsRejected", unit=MetricUnit.Count, value=1)
        return super().failure_handler(record, exception)


log = logging.getLogger(__name__)

_config = IdempotencyConfig(event_key_jmespath="letter", raise_on_no_idempotency_key=True)


def _publish(*, key: dict[str, str], queue: str, message: RabbitMqMessage, reason: str) -> dict[str, Any]:
    props = message.basic_properties
    _bootstrap().dead_letters().dead_letter(
        queue,
        message.body,
        headers=props.amqp_headers(),
        reason=reason,
        message_id=props.message_id,
        sender=props.user_id,
    )
    return {"dead_lettered": key["letter"]}


def _dead_letter(queue: str, message: RabbitMqMessage, reason: str, *, context: Any) -> None:
    """Publishes ``message`` (as received from ``queue``) to ``<queue>.dlq`` with ``reason``, once per message;
    ``context`` is the invocation's Lambda context (its remaining time bounds the idempotency record's lock)."""
    _config.register_lambda_context(context)
    props = message.basic_properties
    digest = hashlib.sha256(f"{queue}\n{props.message_id or ''}\n".encode() + message.body).hexdigest()
    log.warning("dead-letters message %s of %s from %r: %s", props.message_id, queue, props.user_id, reason)
    # Wrapped here, not at import: the persistence layer is the composition root's, built once per container.
    once = idempotent_function(
        data_keyword_argument="key", config=_config, persistence_store=_bootstrap().dead_letter_store()
    )(_publish)
    once(key={"letter": digest}, queue=queue, message=message, reason=reason)


def _bootstrap() -> Any:
    from ringfleet import bootstrap

    return bootstrap


class InvalidMessage(ValueError):
    """What an MQ record handler raises for a message that is no valid message of its queue from its sender
    (unparseable, of the wrong type, from a broker user that may not send it): ``MqBatchProcessor`` dead-letters it
    with ``reason`` and the batch goes on. ``outcome`` names the kind of refusal and ``job_id`` the job the message
    names (when it could be read), for the log."""

    def __init__(self, reason: str, *, outcome: str = "invalid", job_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome
        self.job_id = job_id


@dataclass(frozen=True)
class MqRecord(Generic[T]):
    """One message of an MQ batch as processed: handled (``result``) or dead-lettered (``rejected``)."""

    queue: str
    message: RabbitMqMessage
    #: What the record handler returned; None when the message was dead-lettered.
    result: T | None = None
    #: Why the message was dead-lettered; None when it was handled.
    rejected: InvalidMessage | None = None

    @property
    def dead_letter_queue(self) -> str | None:
        """Where the message went (``<queue>.dlq``), or None when it was handled."""
        return dead_letter_queue(self.queue) if self.rejected is not None else None


#: Publishes a message to its queue's DLQ with a reason, once per message: (queue, message, reason, context=...).
DeadLetter = Callable[..., None]


class MqBatchProcessor:
    """Handles an ``aws:rmq`` batch one message at a time: a message the record handler refuses with InvalidMessage is
    logged, counted (``RecordsRejected``) and published once to ``<queue>.dlq`` with ``x-ringfleet-reason``; the other
    messages of the batch are handled all the same. Any other exception (an infrastructure error, a dead letter that
    cannot be published) propagates: the broker redelivers the batch.

    ``dead_letter`` is for tests; by default the control plane's publisher, once per message (idempotency table).
    """

    def __init__(self, logger: Logger, metrics: Metrics, *, dead_letter: DeadLetter | None = None) -> None:
        self._logger = logger
        self._metrics = metrics
        self._dead_letter = dead_letter or _dead_letter

    def process(
        self, event: dict[str, Any], record_handler: Callable[[RabbitMqMessage], T], context: Any
    ) -> list[MqRecord[T]]:
        """Every message of ``event`` through ``record_handler``, in the order Lambda listed them."""
        from ringfleet.contracts import RabbitMqEvent

        records: list[MqRecord[T]] = []
        for queue, message in RabbitMqEvent.model_validate(event).messages():
            try:
                result = record_handler(message)
            except InvalidMessage as refused:
                self._reject(queue, message, refused, context)
                records.append(MqRecord(queue, message, rejected=refused))
            else:
                records.append(MqRecord(queue, message, result=result))
        return records

    def _reject(self, queue: str, message: RabbitMqMessage, refused: InvalidMessage, context: Any) -> None:
        self._logger.error(
            "message rejected",
            message_id=message.basic_properties.message_id,
            queue=queue,
            job_id=refused.job_id,
            outcome=refused.outcome,
            reason=refused.reason,
        )
        self._metrics.add_metric(name="RecordsRejected", unit=MetricUnit.Count, value=1)
        self._dead_letter(queue, message, refused.reason, context=context)
