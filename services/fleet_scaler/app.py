"""fleet_scaler: demand changes (instance running, backlog alarm, job admitted or finished) and its schedule.

Two triggers: the scaling queue (EventBridge rules -> SQS) and a rate(1 minute) schedule. Every invocation parses
its signals (an unparseable record is reported as a batch item failure) and then reconciles once: the decision
depends on the jobs and the fleet as they are, not on which signal arrived, so duplicates and reorderings are
harmless. ``now`` is the newest event time seen, so a decision is a function of its events.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.batch import process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet.batch import ReportingBatchProcessor
from ringfleet.bootstrap import scaler_service
from ringfleet.contracts import parse_cloud_event

logger = Logger()
tracer = Tracer()
metrics = Metrics()
processor = ReportingBatchProcessor(logger, metrics)
seen: list[datetime] = []


def record_handler(record: SQSRecord) -> None:
    seen.append(parse_cloud_event(record.json_body).time)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    seen.clear()
    response: Mapping[str, Any] = {}
    if "Records" in event:
        response = process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    else:  # the schedule invokes with the scheduled event itself
        seen.append(parse_cloud_event(event).time)
    report = scaler_service().reconcile(max([datetime.now(UTC), *seen]))
    cost = report.decision.cost
    logger.info(report.decision.reason, **report.as_dict())
    metrics.add_metric(name="PendingWorkers", unit=MetricUnit.Count, value=report.pending_workers)
    metrics.add_metric(name="DemandWorkers", unit=MetricUnit.Count, value=report.decision.wanted)
    metrics.add_metric(name="SupplyWorkers", unit=MetricUnit.Count, value=sum(report.running_by_pool.values()))
    metrics.add_metric(name="FleetTargetWorkers", unit=MetricUnit.Count, value=report.decision.total)
    metrics.add_metric(name="FleetCostPerHour", unit=MetricUnit.NoUnit, value=cost.c_base)
    metrics.add_metric(name="ScalingAdjustments", unit=MetricUnit.Count, value=cost.delta_r)
    for pool, n in report.decision.targets.items():
        metrics.add_metric(name=f"PoolWorkers.{pool.replace(':', '.')}", unit=MetricUnit.Count, value=n)
    for job_id, per_hour in report.cost_per_hour_by_job.items():
        # One metric per job (the dashboard's $/hour per job): a dimension of its own, so a metric set of its own.
        with single_metric(name="JobCostPerHour", unit=MetricUnit.NoUnit, value=per_hour) as job_metric:
            job_metric.add_dimension(name="job_id", value=job_id)
    return {**response, "scaling": report.as_dict()}
