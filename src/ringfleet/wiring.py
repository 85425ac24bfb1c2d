"""Wiring for the handlers: settings from the function's environment and adapters built once per container."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    from ringfleet.backup import BackupService
    from ringfleet.recovery import RecoveryService

__all__ = [
    "Settings",
    "WallClock",
    "backup_service",
    "idempotency_store",
    "put_events",
    "recovery_service",
    "settings",
]


class WallClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


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
        from ringfleet.adapters.commands import broker_url, credentials_from_secret

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
    from ringfleet.adapters.commands import AmqpCommandPublisher
    from ringfleet.adapters.dynamodb import DynamoDbJobRepository, DynamoDbNodeRepository
    from ringfleet.adapters.fleet import AwsFleetGateway
    from ringfleet.recovery import RecoveryService

    s, clock, ddb = settings(), WallClock(), _dynamodb()
    return RecoveryService(
        jobs=DynamoDbJobRepository(s.jobs_table, clock=clock, boto3_resource=ddb, nodes_table=s.nodes_table),
        nodes=DynamoDbNodeRepository(s.nodes_table, clock=clock, boto3_resource=ddb),
        publisher=AmqpCommandPublisher(s.broker_url),
        fleet=AwsFleetGateway(autoscaling_client=_client("autoscaling")),
        clock=clock,
        put_events=put_events,
    )


@lru_cache(maxsize=1)
def backup_service() -> BackupService:
    from ringfleet.adapters.dynamodb import DynamoDbCheckpointCatalog, DynamoDbJobRepository
    from ringfleet.adapters.s3_checkpoints import S3CheckpointStore
    from ringfleet.backup import BackupService

    s, clock, ddb = settings(), WallClock(), _dynamodb()
    return BackupService(
        store=S3CheckpointStore(),
        catalog=DynamoDbCheckpointCatalog(s.checkpoints_table, boto3_resource=ddb),
        jobs=DynamoDbJobRepository(s.jobs_table, clock=clock, boto3_resource=ddb),
        clock=clock,
        backup_bucket=s.backup_bucket,
        keep_last=s.keep_last,
        keep_every=s.keep_every,
    )


@lru_cache(maxsize=1)
def idempotency_store() -> DynamoDBPersistenceLayer:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(table_name=settings().idempotency_table, boto_config=aws_config())
