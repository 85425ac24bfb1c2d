"""job_intake: app messages (JobSubmitted, JobCancelled) from the broker's jobs queue (Amazon MQ event source).

Until admission lands this handler validates every message against its contract. An invalid message fails the
batch with an error naming the field; the broker redelivers it and, past its delivery limit, dead-letters it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet.contracts import AppMessage, parse_rmq_messages

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    messages = parse_rmq_messages(event, AppMessage)
    for message in messages:
        logger.info(
            "app message received",
            type=message.type,
            job_id=message.job_id,
            tenant=message.tenant,
            message_id=str(message.message_id),
        )
        metrics.add_metric(name="AppMessages", unit=MetricUnit.Count, value=1)
    return {"accepted": len(messages)}
