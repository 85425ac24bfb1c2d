"""fleet_scaler: demand changes (instance running, backlog alarm, job admitted or finished) and its schedule.

Two triggers: the scaling queue (EventBridge rules -> SQS) and a rate(1 minute) schedule. Until scaling decisions
land this handler validates every event against its contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet.batch import ReportingBatchProcessor
from ringfleet.contracts import parse_cloud_event

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = ReportingBatchProcessor(logger, metrics)


def record_handler(record: SQSRecord) -> None:
    event = parse_cloud_event(record.json_body)
    logger.info("demand signal received", detail_type=event.detail_type, event_id=event.id)
    metrics.add_metric(name="DemandSignals", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    if "Records" not in event:  # the schedule invokes with the scheduled event itself
        tick = parse_cloud_event(event)
        logger.info("scheduled evaluation", detail_type=tick.detail_type, time=str(tick.time))
        metrics.add_metric(name="ScheduledEvaluations", unit=MetricUnit.Count, value=1)
        return {"evaluated": True}
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
