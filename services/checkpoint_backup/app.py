"""checkpoint_backup: a checkpoint manifest created in S3 (S3 notification -> BackupQueue -> here).

Verifies every shard against the manifest, copies the checkpoint to the backup bucket, records it as the job's
newest durable checkpoint when its step is newer, and applies retention; a checkpoint that fails verification is
quarantined and counted in CheckpointsQuarantined (QuarantineAlarm). Each object version is handled once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet import bootstrap
from ringfleet.batch import ReportingBatchProcessor
from ringfleet.contracts import CreatedObject, S3TestEvent, parse_s3_notification

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = ReportingBatchProcessor(logger, metrics)
idempotency = IdempotencyConfig(event_key_jmespath="[bucket, key, sequencer, etag]")


@idempotent_function(data_keyword_argument="key", config=idempotency, persistence_store=bootstrap.idempotency_store())
def back_up(*, key: dict[str, Any], created: CreatedObject) -> dict[str, Any]:
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
        identity = {"bucket": created.bucket, "key": created.key, "sequencer": created.sequencer, "etag": created.etag}
        back_up(key=identity, created=created)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    idempotency.register_lambda_context(context)
    return process_partial_response(event=event, record_handler=record_handler, processor=processor, context=context)
