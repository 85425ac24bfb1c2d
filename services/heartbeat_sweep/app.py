"""heartbeat_sweep: runs on a schedule and finds nodes whose heartbeats stopped (failed nodes without notice)."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet.contracts import parse_cloud_event

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    tick = parse_cloud_event(event)
    logger.info("heartbeat sweep", detail_type=tick.detail_type, time=str(tick.time))
    metrics.add_metric(name="HeartbeatSweeps", unit=MetricUnit.Count, value=1)
    return {"swept_at": str(tick.time)}
