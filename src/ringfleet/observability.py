"""Log lines and metrics the recovery handlers emit for each outcome (Powertools Logger and Metrics)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.metrics import MetricUnit

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics

    from ringfleet.recovery.service import RecoveryOutcome

__all__ = ["report_outcome"]

_UNITS = {"TimeToRecover": MetricUnit.Seconds, "StepsLost": MetricUnit.Count}


def report_outcome(logger: Logger, metrics: Metrics, outcome: RecoveryOutcome, **context: Any) -> None:
    """One log line per decision, with the job id as correlation id, and the decision's metrics."""
    if outcome.job_id:
        logger.set_correlation_id(outcome.job_id)
    plan = outcome.plan
    logger.info(
        outcome.outcome,
        job_id=outcome.job_id,
        generation=plan.job.generation if plan else None,
        commands=[c.type for c in plan.commands] if plan else [],
        **context,
    )
    if outcome.time_to_detect is not None:
        metrics.add_metric(name="TimeToDetect", unit=MetricUnit.Seconds, value=outcome.time_to_detect)
    for name, value in outcome.metrics.items():
        metrics.add_metric(name=name, unit=_UNITS.get(name, MetricUnit.Count), value=value)
    if plan is not None and plan.reconfigured:
        cause = plan.cause or "unknown"
        metrics.add_metric(name="Recoveries", unit=MetricUnit.Count, value=1)
        metrics.add_metric(name=f"Recoveries.{cause}", unit=MetricUnit.Count, value=1)
