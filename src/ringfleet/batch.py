"""Batch processing for the handlers: an SQS record that fails is reported (and logged with its reason), never
lost; an invalid Amazon MQ message is dead-lettered by hand (``dead_letter``), so that it does not take its batch's
valid messages with it.

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
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

    from ringfleet.contracts import RabbitMqMessage

__all__ = ["ReportingBatchProcessor", "dead_letter"]


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


def dead_letter(queue: str, message: RabbitMqMessage, reason: str, *, context: Any) -> None:
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
