"""job_intake: app messages (JobSubmitted, JobCancelled, UpgradeJob) from the broker's jobs queue (Amazon MQ event
source).

A message is handled only when its broker user may send it (``ringfleet.intake.senders``): a tenant's app user
for that tenant, or the control plane's; anything else is refused and changes nothing. Each message is handled on
its own: an invalid one (100,000 workers, a negative budget, not JSON) or a refused one is published, with its
reason, to ``ringfleet.jobs.dlq`` (``ringfleet.batch.dead_letter``: MQ event sources have no partial batch response)
and never admitted, so it reaches neither the jobs table nor the scaler, and the batch's valid messages are
handled once. Infrastructure errors (a dead letter that cannot be published included) raise, and the broker
redelivers the batch (handling is idempotent per message id).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from ringfleet.batch import dead_letter
from ringfleet.bootstrap import intake_service
from ringfleet.contracts import AppMessage, JobCancelled, JobSubmitted, RabbitMqEvent, RabbitMqMessage
from ringfleet.contracts.broker import dead_letter_queue

logger = Logger()
tracer = Tracer()
metrics = Metrics()

#: Outcomes of messages that are no job message of their sender's: published to the jobs queue's DLQ.
DEAD_LETTERED = frozenset({"invalid", "refused"})


def _handle(raw: RabbitMqMessage) -> dict[str, Any]:
    """One app message's outcome; one that is invalid or whose sender may not send it is refused and changes
    nothing (the caller dead-letters it)."""
    from pydantic import TypeAdapter

    try:
        message = TypeAdapter(AppMessage).validate_json(raw.body)
    except ValidationError as exc:
        reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return {"outcome": "invalid", "reason": f"invalid message: {reason}"}
    service = intake_service()
    # The tenant is the one the broker vouches for (the publisher's user), whatever the body claims.
    refused = service.refuse_sender(message, raw.basic_properties.user_id)
    if refused is not None:
        done = refused
    elif isinstance(message, JobSubmitted):
        done = service.on_submitted(message)
    elif isinstance(message, JobCancelled):
        done = service.on_cancelled(message)
    else:
        done = service.on_upgrade(message)
    return done.as_dict()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    outcomes = []
    for queue, raw in RabbitMqEvent.model_validate(event).messages():
        outcome = _handle(raw)
        if outcome["outcome"] in DEAD_LETTERED:
            dead_letter(queue, raw, outcome["reason"], context=context)
            outcome["dead_lettered"] = dead_letter_queue(queue)
        outcomes.append(outcome)
        logger.info("app message", extra=outcome)
        metrics.add_metric(name=f"Jobs.{outcome['outcome']}", unit=MetricUnit.Count, value=1)
    return {"outcomes": outcomes}
