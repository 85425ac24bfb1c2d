"""checkpoint_backup: a checkpoint manifest created in S3 (S3 notification -> SQS -> Lambda).

Until verification and backup land this handler validates each notification and logs the checkpoint it names.
S3 sends an ``s3:TestEvent`` when the notification is configured; it is acknowledged and ignored.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.parser.models import S3Model
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet.contracts import parse_manifest_key

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS)


def record_handler(record: SQSRecord) -> None:
    body = record.json_body
    if body.get("Event") == "s3:TestEvent":
        logger.info("s3 test event ignored", bucket=body.get("Bucket"))
        return
    for s3_record in S3Model.model_validate(body).Records:
        key = unquote_plus(s3_record.s3.object.key)
        parsed = parse_manifest_key(key)
        if parsed is None:
            raise ValueError(
                f"s3.object.key {key!r} is not a checkpoint manifest (jobs/<job>/ckpt/<step>/manifest.json)"
            )
        job_id, step = parsed
        logger.info("checkpoint manifest created", bucket=s3_record.s3.bucket.name, key=key, job_id=job_id, step=step)
        metrics.add_metric(name="ManifestsSeen", unit=MetricUnit.Count, value=1)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
