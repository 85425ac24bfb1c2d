"""checkpoint_backup: a checkpoint manifest created in S3 (S3 notification -> SQS -> Lambda).

Until verification and backup land this handler validates each notification and logs the checkpoint it names.
S3 sends an ``s3:TestEvent`` when the notification is configured; it is acknowledged and ignored.
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
from ringfleet.contracts import S3TestEvent, parse_manifest_key, parse_s3_notification

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = ReportingBatchProcessor(logger, metrics)
MANIFEST_PATTERN = "jobs/<job>/ckpt/<step>/manifest.json"


def record_handler(record: SQSRecord) -> None:
    notification = parse_s3_notification(record.body)
    if isinstance(notification, S3TestEvent):
        logger.info("s3 test event ignored", bucket=notification.Bucket)
        return
    for created in notification.objects():
        parsed = parse_manifest_key(created.key)
        if parsed is None:
            raise ValueError(
                f"s3.object.key {created.key!r} is not a checkpoint manifest (jobs/<job>/ckpt/<step>/manifest.json)"
            )
        job_id, step = parsed
        logger.info("checkpoint manifest created", bucket=created.bucket, key=created.key, job_id=job_id, step=step)
        metrics.add_metric(name="ManifestsSeen", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
