"""Wiring for job_intake and fleet_scaler: their services built once per container from the function's environment."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

from ringfleet.wiring import WallClock, _dynamodb, put_events, settings

if TYPE_CHECKING:
    from ringfleet.intake import IntakeService
    from ringfleet.ports import PriceSource, SpotFleetGateway
    from ringfleet.scaler import ScalerService

__all__ = ["intake_service", "scaler_service"]


def _local() -> bool:
    return os.environ.get("RINGFLEET_LOCAL_CLOUD") == "1"


@lru_cache(maxsize=1)
def intake_service() -> IntakeService:
    from ringfleet.adapters.commands import AmqpCommandPublisher
    from ringfleet.adapters.dynamodb import DynamoDbJobRepository
    from ringfleet.adapters.ec2_fleet import ON_DEMAND_PRICES
    from ringfleet.domain.quotas import Quotas
    from ringfleet.intake import IntakeService

    s, clock = settings(), WallClock()
    return IntakeService(
        jobs=DynamoDbJobRepository(s.jobs_table, clock=clock, boto3_resource=_dynamodb()),
        publisher=AmqpCommandPublisher(s.broker_url),
        put_events=put_events,
        quotas=Quotas.from_json(os.environ.get("TENANT_QUOTAS")),
        clock=clock,
        # The types the scaler can price (the local market has the same): a job asking for others is rejected.
        instance_types=frozenset(ON_DEMAND_PRICES),
    )


def _fleet_and_prices() -> tuple[SpotFleetGateway, PriceSource]:
    from ringfleet.adapters.ec2_fleet import Ec2SpotFleetGateway, Ec2SpotPriceSource, MotoSpotFleetGateway

    stack = os.environ.get("RINGFLEET_STACK", "ringfleet")
    template = os.environ.get("WORKER_LAUNCH_TEMPLATE_NAME", "ringfleet-worker")
    if _local():
        # moto's spot prices are one made-up number and it lacks ModifyFleet: the local market and gateway stand in.
        from ringfleet.local.spot_market import LocalSpotMarket
        from ringfleet.local.spot_traces import TracePriceSource, replay_from_environment

        # `local up --spot-traces DIR`: launches beyond what the replayed traces have now are refused, and the
        # traced type's pools are the traces' zones.
        replay = replay_from_environment(os.environ)
        if replay is not None:
            gateway = MotoSpotFleetGateway(stack=stack, launch_template=template, capacity=replay)
            return gateway, TracePriceSource(replay.market)
        return MotoSpotFleetGateway(stack=stack, launch_template=template), LocalSpotMarket()
    return Ec2SpotFleetGateway(stack=stack, launch_template=template), Ec2SpotPriceSource()


@lru_cache(maxsize=1)
def scaler_service() -> ScalerService:
    from ringfleet.adapters.commands import AmqpCommandPublisher
    from ringfleet.adapters.dynamodb import DynamoDbJobRepository, DynamoDbNodeRepository
    from ringfleet.adapters.scaling_state import DynamoDbScalingStateStore
    from ringfleet.scaler import ScalerService, policy_from_env
    from ringfleet.wiring import recovery_service

    s, clock, ddb = settings(), WallClock(), _dynamodb()
    fleet, prices = _fleet_and_prices()

    def on_capacity_arrived(job_id: str, instance_id: str, host: str | None) -> object:
        return recovery_service().on_capacity_arrived(job_id, instance_id, host)

    return ScalerService(
        jobs=DynamoDbJobRepository(s.jobs_table, clock=clock, boto3_resource=ddb),
        nodes=DynamoDbNodeRepository(s.nodes_table, clock=clock, boto3_resource=ddb),
        fleet=fleet,
        prices=prices,
        state=DynamoDbScalingStateStore(os.environ["SCALING_TABLE"], boto3_resource=ddb),
        publisher=AmqpCommandPublisher(s.broker_url),
        on_capacity_arrived=on_capacity_arrived,
        policy=policy_from_env(),
    )
