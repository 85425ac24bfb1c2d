"""job_intake: app messages (JobSubmitted, JobCancelled, UpgradeJob) from the broker's jobs queue (Amazon MQ event
source).

A message is handled only when its broker user may send it (``ringfleet.intake.senders``): a tenant's app user
for that tenant, or the control plane's; anything else is refused and changes nothing. Each message is handled on
its own (``ringfleet.batch.MqBatchProcessor``): an invalid one (100,000 workers, a negative budget, not JSON) or a
refused one is published, with its reason, to ``ringfleet.jobs.dlq`` (MQ event sources have no partial batch
response) and never admitted, so it reaches neither the jobs table nor the scaler, and the batch's valid messages
are handled once. Infrastructure errors (a dead letter that cannot be published included) raise, and the broker
redelivers the batch (handling is idempotent per message id).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from ringfleet.batch import InvalidMessage, MqBatchProcessor, MqRecord
from ringfleet.bootstrap import intake_service
from ringfleet.contracts import AppMessage, JobCancelled, JobSubmitted, RabbitMqMessage

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = MqBatchProcessor(logger, metrics)


def _handle(raw: RabbitMqMessage) -> dict[str, Any]:
    """One app message's outcome; raises InvalidMessage for one that is invalid or whose sender may not send it
    (it changes nothing and is dead-lettered)."""
    from pydantic import TypeAdapter

    try:
        message = TypeAdapter(AppMessage).validate_json(raw.body)
    except ValidationError as exc:
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidMessage(f"invalid message: {reason}") from None
    service = intake_service()
    # The tenant is the one the broker vouches for (the publisher's user), whatever the body claims.
    refused = service.refuse_sender(message, raw.basic_properties.user_id)
    if refused is not None:
        raise InvalidMessage(refused.reason, outcome="refused", job_id=refused.job_id)
    if isinstance(message, JobSubmitted):
        return service.on_submitted(message).as_dict()
    if isinstance(message, JobCancelled):
        return service.on_cancelled(message).as_dict()
    return service.on_upgrade(message).as_dict()


def _outcome(record: MqRecord[dict[str, Any]]) -> dict[str, Any]:
    if record.rejected is None:
        assert record.result is not None
        return record.result
    rejected = record.rejected
    outcome = {"outcome": rejected.outcome, "reason": rejected.reason, "dead_lettered": record.dead_letter_queue}
    return outcome if rejected.job_id is None else {"job_id": rejected.job_id, **outcome}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcomes = [_outcome(record) for record in processor.process(event, _handle, context)]
    for outcome in outcomes:
        logger.info("app message", extra=outcome)
        metrics.add_metric(name=f"Jobs.{outcome['outcome']}", unit=MetricUnit.Count, value=1)
    return {"outcomes": outcomes}
