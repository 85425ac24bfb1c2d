"""heartbeat_sweep: every minute, members whose heartbeats stopped are failed nodes; recovery starts without notice.

"Now" is the schedule event's time, so a tick redelivered late judges silence as of when it fired; the tick is
handled once per event id (Powertools idempotency).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet import bootstrap
from ringfleet.contracts import ScheduledEvent, parse_cloud_event
from ringfleet.observability import report_outcome

logger = Logger()
tracer = Tracer()
metrics = Metrics()
idempotency = IdempotencyConfig(event_key_jmespath="id", raise_on_no_idempotency_key=True)


@idempotent_function(data_keyword_argument="event", config=idempotency, persistence_store=bootstrap.idempotency_store())
def sweep(*, event: dict[str, Any], tick: ScheduledEvent) -> dict[str, Any]:
    outcomes = bootstrap.recovery_service().sweep(bootstrap.settings().heartbeat_timeout, now=tick.time)
    for outcome in outcomes:
        report_outcome(logger, metrics, outcome, cause="heartbeat-lost")
    metrics.add_metric(name="SilentNodes", unit=MetricUnit.Count, value=len(outcomes))
    return {"swept_at": tick.time.isoformat(), "lost": [o.as_dict() for o in outcomes]}


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency.register_lambda_context(context)
    tick = parse_cloud_event(event)
    if not isinstance(tick, ScheduledEvent):
        raise ValueError(f"detail-type {tick.detail_type!r} is not a scheduled event")
    result: dict[str, Any] = sweep(event=event, tick=tick)
    return result
