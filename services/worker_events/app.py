"""worker_events: worker messages (Heartbeat, CheckpointCompleted, WorkerFailed) from the broker (Amazon MQ).

Until the recovery state machine lands this handler validates every message against its contract.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet.contracts import WorkerMessage, parse_rmq_messages

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    messages = parse_rmq_messages(event, WorkerMessage)
    for message in messages:
        logger.debug("worker message", type=message.type, job_id=message.job_id, instance_id=message.instance_id)
        metrics.add_metric(name=f"{message.type}Received", unit=MetricUnit.Count, value=1)
    return {"accepted": len(messages)}
