"""instance_catalog: on its schedule, the instance catalog (GPUs, on-demand prices) is read again from AWS and stored.

The catalog covers the instance types the fleet may launch (WORKER_INSTANCE_TYPES): their GPUs from EC2's
DescribeInstanceTypes, their on-demand prices from the Pricing API. Running twice is harmless: the same answers
store the same catalog, and a tick delivered late never replaces a catalog refreshed after it.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from ringfleet import bootstrap
from ringfleet.contracts import ScheduledEvent, parse_cloud_event

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    tick = parse_cloud_event(event)
    if not isinstance(tick, ScheduledEvent):
        raise ValueError(f"detail-type {tick.detail_type!r} is not a scheduled event")
    catalog = bootstrap.catalog_service().refresh(tick.time)
    types = {t.name: {"gpus": t.gpus, "on_demand_per_hour": t.on_demand_per_hour} for t in catalog.types.values()}
    logger.info("instance catalog refreshed", types=types, left_out=dict(catalog.left_out))
    metrics.add_metric(name="CatalogInstanceTypes", unit=MetricUnit.Count, value=len(types))
    at = catalog.refreshed_at.isoformat() if catalog.refreshed_at else None
    return {"refreshed_at": at, "types": types, "left_out": dict(catalog.left_out)}
