"""checkpoint_backup: a checkpoint manifest created in S3 (S3 notification -> BackupQueue -> here).

Verifies every shard against the manifest, copies the checkpoint to the backup bucket, records it as the job's
newest durable checkpoint when its step is newer, and applies retention; a checkpoint that fails verification is
quarantined and counted in CheckpointsQuarantined (QuarantineAlarm).

Safe to run twice without Powertools idempotency: the checkpoints table is the record of what was handled, so a
redelivered manifest finds its step DURABLE and is answered "already-handled" with one query and no write; a
quarantined one is vetted again and the same verdict writes nothing (a changed one, say its writer's own manifest
after a forgery, is backed up). Two deliveries racing both copy the same verified versions and write the same record.
The idempotency table would cost two writes per manifest and, at cold start, a DynamoDB client built before the
first event (+~150 ms, ``bench/cold_start.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet import bootstrap
from ringfleet.batch import ReportingBatchProcessor
from ringfleet.contracts import CreatedObject, S3TestEvent, parse_s3_notification

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = ReportingBatchProcessor(logger, metrics)


def back_up(created: CreatedObject) -> dict[str, Any]:
    outcome = bootstrap.backup_service().on_manifest_created(created)
    logger.set_correlation_id(outcome.job_id)
    if outcome.result == "quarantined":
        logger.error("checkpoint quarantined", job_id=outcome.job_id, step=outcome.step, reason=outcome.reason)
        metrics.add_metric(name="CheckpointsQuarantined", unit=MetricUnit.Count, value=1)
    else:
        logger.info(f"checkpoint {outcome.result}", job_id=outcome.job_id, step=outcome.step, newest=outcome.newest)
        metrics.add_metric(name="BackupsVerified", unit=MetricUnit.Count, value=int(outcome.result == "backed-up"))
        metrics.add_metric(name="CheckpointsRetired", unit=MetricUnit.Count, value=len(outcome.retired))
    return {"job_id": outcome.job_id, "step": outcome.step, "result": outcome.result, "reason": outcome.reason}


def record_handler(record: SQSRecord) -> None:
    notification = parse_s3_notification(record.body)
    if isinstance(notification, S3TestEvent):
        logger.info("s3 test event ignored", bucket=notification.Bucket)
        return
    for created in notification.objects():
        back_up(created)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
