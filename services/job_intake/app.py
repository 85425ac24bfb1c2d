"""job_intake: app messages (JobSubmitted, JobCancelled, UpgradeJob) from the broker's jobs queue (Amazon MQ event
source).

A message is handled only when its broker user may send it (``ringfleet.intake.senders``): a tenant's app user
for that tenant, or the control plane's; anything else is refused and changes nothing. Each message is handled on
its own: an invalid one (100,000 workers, a negative budget) is rejected with its
reason logged and never admitted, so it reaches neither the jobs table nor the scaler, and it does not hold up the
valid messages of its batch. Infrastructure errors raise, and the broker redelivers the batch (handling is
idempotent per message id).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from ringfleet.bootstrap import intake_service
from ringfleet.contracts import AppMessage, JobCancelled, JobSubmitted, RabbitMqEvent

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    from pydantic import TypeAdapter

    outcomes = []
    for _, raw in RabbitMqEvent.model_validate(event).messages():
        try:
            message = TypeAdapter(AppMessage).validate_json(raw.body)
        except ValidationError as exc:
            reason = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            outcomes.append({"outcome": "rejected", "reason": f"invalid message: {reason}"})
        else:
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
            outcomes.append(done.as_dict())
        logger.info("app message", extra=outcomes[-1])
        metrics.add_metric(name=f"Jobs.{outcomes[-1]['outcome']}", unit=MetricUnit.Count, value=1)
    return {"outcomes": outcomes}
