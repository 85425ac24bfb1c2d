"""job_intake: app messages (JobSubmitted, JobCancelled) from the broker's jobs queue (Amazon MQ event source).

Each message is handled on its own: an invalid one (100,000 workers, a negative budget) is rejected with its
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
from ringfleet.contracts import AppMessage, JobSubmitted, RabbitMqEvent

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
            done = service.on_submitted(message) if isinstance(message, JobSubmitted) else service.on_cancelled(message)
            outcomes.append(done.as_dict())
        logger.info("app message", extra=outcomes[-1])
        metrics.add_metric(name=f"Jobs.{outcomes[-1]['outcome']}", unit=MetricUnit.Count, value=1)
    return {"outcomes": outcomes}
