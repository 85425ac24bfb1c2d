"""SQS batch processing for the handlers: a record that fails is reported (and logged with its reason), never lost."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

__all__ = ["ReportingBatchProcessor"]


class ReportingBatchProcessor(BatchProcessor):
    """Reports failed records as ``batchItemFailures`` and logs why each failed.

    Unlike Powertools' default, a batch whose every record fails is also *reported*, not raised: the effect on
    the queue is the same (those records come back, then go to the DLQ after maxReceiveCount), and the
    function's Errors alarm stays for real faults rather than for hostile input.
    """

    def __init__(self, logger: Logger, metrics: Metrics) -> None:
        super().__init__(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
        self._logger = logger
        self._metrics = metrics

    def failure_handler(self, record: Any, exception: Any) -> Any:
        exc_type, exc, _ = exception
        self._logger.error(
            "record rejected",
            message_id=getattr(record, "message_id", None),
            error_type=getattr(exc_type, "__name__", str(exc_type)),
            reason=str(exc),
        )
        self._metrics.add_metric(name="RecordsRejected", unit=MetricUnit.Count, value=1)
        return super().failure_handler(record, exception)
