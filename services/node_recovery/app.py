"""node_recovery: spot interruption warnings, rebalance recommendations, instance state changes, lifecycle hooks.

Events arrive through the recovery queue (EventBridge rule -> SQS -> Lambda). Until recovery planning lands this
handler validates each event against its contract and reports the ones that do not parse as batch item failures,
so they end in the DLQ after the queue's maxReceiveCount.
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
    logger.info("cloud event received", detail_type=event.detail_type, event_id=event.id, resources=event.resources)
    metrics.add_metric(name="CloudEventsReceived", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
