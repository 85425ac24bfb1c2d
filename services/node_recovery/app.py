"""node_recovery: spot interruption warnings, rebalance recommendations, instances leaving, terminate lifecycle hooks.

EventBridge rule -> RecoveryQueue -> here. Each record is parsed and applied by the recovery use case; a record
that fails goes back to the queue and, after maxReceiveCount, to the DLQ with its reason logged. No idempotency
record per event: the generation fence already makes a repeated event a no-op (see ringfleet.recovery), and an
idempotency record would cost two of the four round trips a warning takes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet import bootstrap
from ringfleet.batch import ReportingBatchProcessor
from ringfleet.contracts import NodeEvent, parse_cloud_event
from ringfleet.observability import report_outcome

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = ReportingBatchProcessor(logger, metrics)


def record_handler(record: SQSRecord) -> dict[str, Any]:
    parsed = parse_cloud_event(record.json_body)
    if not isinstance(parsed, NodeEvent):
        raise ValueError(f"detail-type {parsed.detail_type!r} is not an event about one instance")
    outcome = bootstrap.recovery_service().on_node_event(parsed)
    report_outcome(logger, metrics, outcome, detail_type=parsed.detail_type, instance_id=parsed.instance_id)
    return outcome.as_dict()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
