"""worker_events: Heartbeat, CheckpointCompleted, WorkerFailed and InstanceIdle from the broker's worker-events queue
(Amazon MQ).

Heartbeats record liveness; checkpoints and failures feed the recovery state machine; an idle agent frees its instance
once its job has ended. Each message is handled once per message id (Powertools idempotency), on its own
(``ringfleet.batch.MqBatchProcessor``): an invalid one (unparseable, of another type, sent by a tenant's app user, or
without the ``user_id`` the broker vouches for) is published with its reason to ``ringfleet.worker-events.dlq`` (MQ
event sources have no partial batch response, so failing the batch would dead-letter its valid messages too) and the
batch succeeds. Only an error applying a valid message, or publishing a dead letter, fails the batch.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet import bootstrap
from ringfleet.batch import InvalidMessage, MqBatchProcessor
from ringfleet.contracts import (
    Heartbeat,
    InstanceIdle,
    RabbitMqMessage,
    WorkerFailed,
    WorkerMessage,
    parse_rmq_messages,
)
from ringfleet.contracts.broker import tenant_of_user
from ringfleet.observability import report_outcome

logger = Logger()
tracer = Tracer()
metrics = Metrics()
idempotency = IdempotencyConfig(event_key_jmespath="message_id", raise_on_no_idempotency_key=True)
processor = MqBatchProcessor(logger, metrics)


@idempotent_function(data_keyword_argument="key", config=idempotency, persistence_store=bootstrap.idempotency_store())
def handle_message(*, key: dict[str, str], message: Any) -> dict[str, Any]:
    service = bootstrap.recovery_service()
    metrics.add_metric(name=f"{message.type}Received", unit=MetricUnit.Count, value=1)
    if isinstance(message, Heartbeat):
        beat = service.on_heartbeat(message).outcome
        if message.rank == 0 and message.goodput is not None and beat == "recorded":
            # The job's goodput (the dashboard's per-job widget): rank 0 speaks for the ring, a dimension per job.
            with single_metric(name="Goodput", unit=MetricUnit.NoUnit, value=message.goodput) as job_metric:
                job_metric.add_dimension(name="job_id", value=message.job_id)
        return {"heartbeat": beat}
    if isinstance(message, WorkerFailed):
        outcome = service.on_worker_failed(message)
    elif isinstance(message, InstanceIdle):
        outcome = service.on_instance_idle(message)
    else:
        outcome = service.on_checkpoint_completed(message)
    report_outcome(logger, metrics, outcome, message_type=message.type, instance_id=message.instance_id)
    return outcome.as_dict()


def _worker_message(event: dict[str, Any], raw: RabbitMqMessage) -> Any:
    """The worker message a worker sent; InvalidMessage (dead-lettered) for anything else."""
    sender = raw.basic_properties.user_id
    if not sender:
        # RabbitMQ checks user_id only when a publisher sets it: unstamped, anyone with a login (an app, through the
        # default exchange) could speak for any worker, e.g. end another tenant's job with a forged final checkpoint.
        # Every worker stamps its broker user; nothing is believed without the broker's word for its sender.
        raise InvalidMessage("no user_id: the broker vouches for no sender, and only workers send worker messages")
    if tenant_of_user(sender) is not None:
        # An app user can name this queue through the default exchange; the broker vouches it sent this: apps
        # never speak for workers.
        raise InvalidMessage(f"broker user {sender!r} is a tenant's app user: it may not send worker messages")
    single = {**event, "rmqMessagesByQueue": {"q::/": [raw.model_dump(by_alias=True)]}}
    try:
        (message,) = parse_rmq_messages(single, WorkerMessage)
    except ValueError as exc:
        raise InvalidMessage(f"invalid message: {exc}") from None
    return message


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)

    def apply(raw: RabbitMqMessage) -> dict[str, Any]:
        message = _worker_message(event, raw)
        return handle_message(key={"message_id": str(message.message_id)}, message=message)

    records = processor.process(event, apply, context)
    dead = sum(1 for r in records if r.rejected is not None)
    return {"accepted": len(records) - dead, "dead_lettered": dead}
