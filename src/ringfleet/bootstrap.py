"""The composition root: every handler's use case built once per container from the function's environment.

Handlers import only this module and their contracts; the use cases never build their own adapters. The AWS
adapters are the default. A host that runs the handlers elsewhere (the local cloud's Lambda host) replaces the
fleet's adapters with ``provide_fleet`` before the first invocation, so production code never imports the local
cloud (cosmicpython's ``bootstrap``: the one place where ports meet adapters).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from ringfleet.core.ports import SystemClock

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    from ringfleet.adapters.commands import AmqpCommandPublisher
    from ringfleet.backup.service import BackupService
    from ringfleet.core.nodes import Node
    from ringfleet.intake.service import IntakeService
    from ringfleet.recovery.service import RecoveryService
    from ringfleet.scaling.catalog_service import InstanceCatalogService
    from ringfleet.scaling.ports import PriceSource, SpotFleetGateway
    from ringfleet.scaling.service import ScalerService

__all__ = [
    "Settings",
    "backup_service",
    "catalog_service",
    "dead_letter_store",
    "dead_letters",
    "idempotency_store",
    "intake_service",
    "provide_fleet",
    "put_events",
    "recovery_service",
    "scaler_service",
    "settings",
]


@dataclass(frozen=True)
class Settings:
    """The environment template.yaml gives every function, validated at cold start."""

    jobs_table: str
    nodes_table: str
    checkpoints_table: str
    idempotency_table: str
    checkpoint_bucket: str
    backup_bucket: str
    broker_endpoint: str
    broker_secret_id: str
    #: Retention: the newest K durable checkpoints of a job are kept, and every Nth step's (0: none).
    keep_last: int = 3
    keep_every: int = 0
    #: A member not heard from for this long is lost (workers heartbeat every few seconds).
    heartbeat_timeout: timedelta = timedelta(seconds=90)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        missing = [k for k in ("JOBS_TABLE", "NODES_TABLE", "IDEMPOTENCY_TABLE") if not env.get(k)]
        if missing:
            raise RuntimeError(f"environment variables {missing} are not set (see template.yaml Globals)")
        return cls(
            jobs_table=env["JOBS_TABLE"],
            nodes_table=env["NODES_TABLE"],
            checkpoints_table=env.get("CHECKPOINTS_TABLE", ""),
            idempotency_table=env["IDEMPOTENCY_TABLE"],
            checkpoint_bucket=env.get("CHECKPOINT_BUCKET", ""),
            backup_bucket=env.get("BACKUP_BUCKET", ""),
            broker_endpoint=env.get("BROKER_ENDPOINT", ""),
            broker_secret_id=env.get("BROKER_SECRET_ARN", ""),
            keep_last=int(env.get("CHECKPOINT_KEEP_LAST") or 3),
            keep_every=int(env.get("CHECKPOINT_KEEP_EVERY") or 0),
            heartbeat_timeout=timedelta(seconds=float(env.get("HEARTBEAT_TIMEOUT_SECONDS") or 90)),
        )

    def broker_url(self) -> str:
        """The broker URL with the credentials of the broker secret (read when the first command is published)."""
        from ringfleet.adapters.commands import credentials_from_secret
        from ringfleet.contracts.broker import broker_url

        username, password = credentials_from_secret(self.broker_secret_id)
        return broker_url(self.broker_endpoint, username, password)


@lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()


#: AWS calls retry inside the invocation, boto3's "standard" mode: at most 3 attempts, exponential backoff with full
#: jitter (base 1 s, capped at 20 s, throttles and transient errors only), so a blip costs a second or two instead of
#: the queue's visibility timeout. Connect and read timeouts bound one attempt well inside the function's timeout.
AWS_MAX_ATTEMPTS = 3


@lru_cache(maxsize=1)
def aws_config() -> Any:
    from botocore.config import Config

    return Config(retries={"mode": "standard", "max_attempts": AWS_MAX_ATTEMPTS}, connect_timeout=2, read_timeout=5)


@lru_cache(maxsize=1)
def _dynamodb() -> object:
    import boto3

    return boto3.resource("dynamodb", config=aws_config())


@lru_cache(maxsize=1)
def _events() -> Any:
    import boto3

    return boto3.client("events", config=aws_config())


def _client(service: str) -> Any:
    import boto3

    return boto3.client(service, config=aws_config())  # type: ignore[call-overload]


def put_events(entries: list[dict[str, Any]]) -> None:
    """Puts the control plane's own events on the function's bus (EVENT_BUS_NAME, template.yaml Globals)."""
    bus = os.environ.get("EVENT_BUS_NAME", "default")
    response = _events().put_events(Entries=[{**e, "EventBusName": bus} for e in entries])
    if response.get("FailedEntryCount"):
        raise RuntimeError(f"put_events failed: {response.get('Entries')}")


@lru_cache(maxsize=1)
def recovery_service() -> RecoveryService:
    from ringfleet.adapters.autoscaling import AutoScalingLifecycle
    from ringfleet.adapters.commands import AmqpCommandPublisher
    from ringfleet.adapters.dynamodb import DynamoDbJobRepository, DynamoDbNodeRepository
    from ringfleet.recovery.service import RecoveryService

    s, clock, ddb = settings(), SystemClock(), _dynamodb()
    return RecoveryService(
        jobs=DynamoDbJobRepository(s.jobs_table, clock=clock, boto3_resource=ddb, nodes_table=s.nodes_table),
        nodes=DynamoDbNodeRepository(s.nodes_table, clock=clock, boto3_resource=ddb),
        publisher=AmqpCommandPublisher(s.broker_url),
        fleet=AutoScalingLifecycle(autoscaling_client=_client("autoscaling")),
        clock=clock,
        put_events=put_events,
    )


@lru_cache(maxsize=1)
def backup_service() -> BackupService:
    from ringfleet.adapters.dynamodb import DynamoDbCheckpointCatalog, DynamoDbJobRepository, DynamoDbNodeRepository
    from ringfleet.adapters.s3_checkpoints import S3CheckpointObjects
    from ringfleet.backup.service import BackupService

    s, clock, ddb = settings(), SystemClock(), _dynamodb()
    return BackupService(
        store=S3CheckpointObjects(),
        catalog=DynamoDbCheckpointCatalog(s.checkpoints_table, boto3_resource=ddb),
        jobs=DynamoDbJobRepository(s.jobs_table, clock=clock, boto3_resource=ddb),
        # A manifest is a checkpoint of the job only when its writer is one of the job's nodes (backup/writers.py).
        nodes=DynamoDbNodeRepository(s.nodes_table, clock=clock, boto3_resource=ddb),
        clock=clock,
        backup_bucket=s.backup_bucket,
        keep_last=s.keep_last,
        keep_every=s.keep_every,
    )


@lru_cache(maxsize=1)
def idempotency_store() -> DynamoDBPersistenceLayer:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(table_name=settings().idempotency_table, boto_config=aws_config())


@lru_cache(maxsize=1)
def dead_letter_store() -> DynamoDBPersistenceLayer:
    """The idempotency records of dead letters (``ringfleet.batch.MqBatchProcessor``), in the idempotency table: a
    layer of their own, since Powertools configures a layer with the first config that uses it (the handler's own is
    keyed by message id)."""
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(table_name=settings().idempotency_table, boto_config=aws_config())


@lru_cache(maxsize=1)
def dead_letters() -> AmqpCommandPublisher:
    """The publisher MQ handlers dead-letter invalid messages with (``ringfleet.batch.MqBatchProcessor``): the control
    plane's user; it connects on its first dead letter, so a container that never gets one opens no connection."""
    from ringfleet.adapters.commands import AmqpCommandPublisher

    return AmqpCommandPublisher(settings().broker_url)


@lru_cache(maxsize=1)
def control_user() -> str | None:
    """The control plane's broker user: the broker secret's (None where no secret is configured)."""
    from ringfleet.adapters.commands import credentials_from_secret

    secret = settings().broker_secret_id
    return credentials_from_secret(secret)[0] if secret else None


@lru_cache(maxsize=1)
def intake_service() -> IntakeService:
    from ringfleet.adapters.commands import AmqpCommandPublisher
    from ringfleet.adapters.dynamodb import DynamoDbJobRepository
    from ringfleet.intake.quotas import REGISTRY_ENV, TenantRegistry
    from ringfleet.intake.service import IntakeService

    s, clock = settings(), SystemClock()
    return IntakeService(
        jobs=DynamoDbJobRepository(s.jobs_table, clock=clock, boto3_resource=_dynamodb()),
        publisher=AmqpCommandPublisher(s.broker_url),
        put_events=put_events,
        # Only registered tenants' jobs are admitted (the TenantRegistry parameter; see ringfleet.intake.quotas).
        tenants=TenantRegistry.from_json(os.environ.get(REGISTRY_ENV)),
        clock=clock,
        # The instance catalog's types (the ones the scaler can count slots of and price) with their on-demand $/h:
        # others are rejected, and so is a job whose min_workers its budget cannot pay for on demand.
        catalog=lambda: catalog_service().current(),
        control_user=control_user,
    )


@lru_cache(maxsize=1)
def catalog_service() -> InstanceCatalogService:
    """The instance catalog (CATALOG_TABLE) of the WORKER_INSTANCE_TYPES, read from EC2 and the Pricing API."""
    from ringfleet.adapters.instance_catalog import (
        DynamoDbInstanceCatalogStore,
        Ec2InstanceTypes,
        PricingOnDemandPrices,
    )
    from ringfleet.scaling.catalog_service import INSTANCE_TYPES_ENV, InstanceCatalogService, instance_types_from_env

    table = os.environ.get("CATALOG_TABLE")
    if not table:
        raise RuntimeError("environment variable CATALOG_TABLE is not set (see template.yaml Globals)")
    return InstanceCatalogService(
        instance_types=instance_types_from_env(os.environ.get(INSTANCE_TYPES_ENV)),
        ec2=Ec2InstanceTypes(ec2_client=_client("ec2")),
        pricing=PricingOnDemandPrices(pricing_client=_pricing()),
        store=DynamoDbInstanceCatalogStore(table, boto3_resource=_dynamodb()),
        clock=SystemClock(),
    )


def _pricing() -> Any:
    import boto3

    from ringfleet.adapters.instance_catalog import PRICING_REGION

    return boto3.client("pricing", region_name=PRICING_REGION, config=aws_config())


FleetAdapters = Callable[[str, str], "tuple[SpotFleetGateway, PriceSource]"]
_fleet_provider: FleetAdapters | None = None


def provide_fleet(provider: FleetAdapters) -> None:
    """Replaces the EC2 Fleet gateway and the EC2 spot prices: ``provider(stack, launch_template)`` returns the
    gateway and the price source the scaler uses (the local cloud's fleet emulator and market)."""
    global _fleet_provider
    _fleet_provider = provider
    scaler_service.cache_clear()


def _fleet_and_prices() -> tuple[SpotFleetGateway, PriceSource]:
    from ringfleet.adapters.ec2_fleet import Ec2SpotFleetGateway, Ec2SpotPriceSource

    stack = os.environ.get("RINGFLEET_STACK", "ringfleet")
    template = os.environ.get("WORKER_LAUNCH_TEMPLATE_NAME", "ringfleet-worker")
    if _fleet_provider is not None:
        return _fleet_provider(stack, template)
    version = os.environ.get("WORKER_LAUNCH_TEMPLATE_VERSION", "$Latest")
    return Ec2SpotFleetGateway(
        stack=stack, launch_template=template, launch_template_version=version
    ), Ec2SpotPriceSource()


@lru_cache(maxsize=1)
def scaler_service() -> ScalerService:
    from ringfleet.adapters.commands import AmqpCommandPublisher
    from ringfleet.adapters.dynamodb import DynamoDbJobRepository, DynamoDbNodeRepository
    from ringfleet.adapters.scaling_state import DynamoDbScalingStateStore
    from ringfleet.scaling.service import ScalerService, policy_from_env

    s, clock, ddb = settings(), SystemClock(), _dynamodb()
    fleet, prices = _fleet_and_prices()

    def on_capacity_arrived(job_id: str, node: Node) -> object:
        return recovery_service().on_capacity_arrived(job_id, node.instance_id, node.host, slots=node.slots)

    def on_retire(job_id: str, instance_id: str) -> object:
        return recovery_service().retire(job_id, instance_id)

    return ScalerService(
        jobs=DynamoDbJobRepository(s.jobs_table, clock=clock, boto3_resource=ddb),
        nodes=DynamoDbNodeRepository(s.nodes_table, clock=clock, boto3_resource=ddb),
        fleet=fleet,
        prices=prices,
        catalog=lambda: catalog_service().current(),
        state=DynamoDbScalingStateStore(os.environ["SCALING_TABLE"], boto3_resource=ddb),
        publisher=AmqpCommandPublisher(s.broker_url),
        on_capacity_arrived=on_capacity_arrived,
        on_retire=on_retire,
        policy=policy_from_env(),
    )
