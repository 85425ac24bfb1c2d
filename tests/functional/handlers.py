"""One handler of services/, invoked in-process as Lambda invokes it, on a moto server of its own with
template.yaml's resources, publishing its commands to the real RabbitMQ.

The handler module is loaded from its file with the function's environment as template.yaml gives it (resolved by
the local cloud), after the composition root's cached settings, clients and use cases are dropped: they were built
for whatever environment came before. Each test module gets a cloud of its own, and each test empty tables
(``Handler.reset``), since the samples of ``events/`` all name one job (``digits-demo``) and its instances, and
the fleet scaler reconciles every job the tables hold.

Commands are read from a queue of the test's own bound to the commands exchange for that job (``CommandTap``), on
the test session's vhost: a vhost per test would cost two ``rabbitmqctl`` runs (seconds each) and a fresh
publisher connection, and the queue alone already sees exactly the job's commands.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import boto3
from ringfleet_local.cloud import LocalCloud

from ringfleet import bootstrap
from ringfleet.adapters.dynamodb import DynamoDbJobRepository, DynamoDbNodeRepository
from ringfleet.adapters.rabbitmq import connect, declare_topology
from ringfleet.contracts.broker import COMMANDS_EXCHANGE, command_routing_key
from ringfleet.core.jobs import Job
from ringfleet.core.nodes import Node
from ringfleet.core.ports import SystemClock
from tests.builders import instance, running_job
from tests.conftest import ROOT

#: The job and instances the samples of events/ name (i-0abcd1234ef567890 .. 892, generation 3).
SAMPLE_JOB = "digits-demo"
SAMPLE_FIRST_INSTANCE = 0x0ABCD1234EF567890
#: The tables a handler's effects show in (the idempotency table's records are how it avoids repeating them).
TABLES = ("JobsTable", "NodesTable", "CheckpointsTable", "ScalingStateTable", "CatalogTable")


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())
    return data


def in_sqs(*bodies: dict[str, Any] | str) -> dict[str, Any]:
    """An SQS batch as Lambda delivers it, of the sample record (sqs_spot_interruption_warning.json) carrying each
    body in turn (an EventBridge event, or raw text), each record with a message id of its own."""
    (record,) = sample("sqs_spot_interruption_warning.json")["Records"]
    records = []
    for n, body in enumerate(bodies):
        text = body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))
        records.append({**record, "messageId": f"{record['messageId'][:-4]}{n:04d}", "body": text})
    return {"Records": records}


@dataclass
class LambdaContext:
    """What Powertools reads of Lambda's context object."""

    function_name: str
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def _drop_composition_root() -> None:
    """Closes the cached use cases' broker connections and forgets every cached setting, client and use case."""
    for name in ("recovery_service", "intake_service", "scaler_service"):
        cached = getattr(bootstrap, name)
        if cached.cache_info().currsize:
            close = getattr(getattr(cached(), "publisher", None), "close", None)
            if callable(close):
                close()
    if bootstrap.dead_letters.cache_info().currsize:
        bootstrap.dead_letters().close()
    for value in vars(bootstrap).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


@dataclass
class Handler:
    """A handler module loaded as its function, and the cloud it runs against."""

    cloud: LocalCloud
    logical_id: str
    module: ModuleType

    def __call__(self, event: dict[str, Any]) -> Any:
        return self.module.handler(event, LambdaContext(self.logical_id))

    def ref(self, logical_id: str) -> str:
        return str(self.cloud.ctx.resolve({"Ref": logical_id}))

    @property
    def jobs(self) -> DynamoDbJobRepository:
        return DynamoDbJobRepository(
            self.ref("JobsTable"), clock=SystemClock(), boto3_resource=boto3.resource("dynamodb")
        )

    @property
    def nodes(self) -> DynamoDbNodeRepository:
        return DynamoDbNodeRepository(
            self.ref("NodesTable"), clock=SystemClock(), boto3_resource=boto3.resource("dynamodb")
        )

    def seed(self, job: Job, nodes: list[Node]) -> None:
        assert self.jobs.create(job)
        for node in nodes:
            self.nodes.put(node)

    def reset(self) -> None:
        """Empties every table of the template, the idempotency records included: each test starts from none."""
        client = boto3.client("dynamodb")
        for table in (*TABLES, "IdempotencyTable"):
            name = self.ref(table)
            keys = [k["AttributeName"] for k in client.describe_table(TableName=name)["Table"]["KeySchema"]]
            for page in client.get_paginator("scan").paginate(TableName=name):
                for item in page["Items"]:
                    client.delete_item(TableName=name, Key={k: item[k] for k in keys})

    def tables(self) -> dict[str, list[dict[str, Any]]]:
        """Every item of the template's tables but the idempotency records, sorted: what the handler changed."""
        client = boto3.client("dynamodb")
        out = {}
        for table in TABLES:
            items = client.scan(TableName=self.ref(table))["Items"]
            out[table] = sorted(items, key=lambda i: json.dumps(i, sort_keys=True))
        return out


@contextmanager
def handler_of(service: str, broker_url: str) -> Iterator[Handler]:
    """``services/<service>/app.py`` loaded as its function, on a cloud of its own; its environment, the composition
    root and the module are undone afterwards."""
    with LocalCloud(ROOT / "template.yaml", route=False, broker_url=broker_url) as cloud:
        functions = {fn.environment["POWERTOOLS_SERVICE_NAME"]: lid for lid, fn in cloud.ctx.functions.items()}
        logical_id = functions[service]
        env = cloud.ctx.function_environment(logical_id)
        env.pop("PYTHONPATH", None)
        saved = {k: os.environ.get(k) for k in env}
        saved_fleet = vars(bootstrap)["_fleet_provider"]
        os.environ.update(env)
        _drop_composition_root()
        if service == "fleet_scaler":
            # as the local cloud's Lambda host does: moto has no EC2 Fleet good enough, nor spot prices
            from ringfleet_local.moto_fleet import local_fleet

            bootstrap.provide_fleet(local_fleet)
        name = f"functional_{service}_app"
        spec = importlib.util.spec_from_file_location(name, ROOT / "services" / service / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            yield Handler(cloud, logical_id, module)
        finally:
            sys.modules.pop(name, None)
            _drop_composition_root()
            bootstrap._fleet_provider = saved_fleet
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


class CommandTap:
    """A queue of its own bound to every command for ``job_id``'s workers (``<job>.<instance>``, ``<job>.all``)."""

    def __init__(self, broker_url: str, job_id: str) -> None:
        self.url = broker_url
        self.queue = f"test-commands-{uuid.uuid4().hex[:10]}"
        self.pattern = command_routing_key(job_id, "*")
        asyncio.run(self._declare())

    async def _declare(self) -> None:
        async with await connect(self.url) as conn:
            channel = await conn.channel()
            await declare_topology(channel)
            queue = await channel.declare_queue(self.queue, durable=False)
            await queue.bind(COMMANDS_EXCHANGE, routing_key=self.pattern)

    def drain(self) -> list[dict[str, Any]]:
        """The commands published since the last drain, oldest first, each with its routing key as ``_to``."""

        async def run() -> list[dict[str, Any]]:
            got = []
            async with await connect(self.url) as conn:
                queue = await (await conn.channel()).get_queue(self.queue)
                while (message := await queue.get(no_ack=True, fail=False)) is not None:
                    got.append({**json.loads(message.body), "_to": message.routing_key})
            return got

        return asyncio.run(run())

    def close(self) -> None:
        async def run() -> None:
            async with await connect(self.url) as conn:
                await (await conn.channel()).queue_delete(self.queue)

        asyncio.run(run())


def mq_batch(sample_name: str, *changes: dict[str, Any] | bytes) -> dict[str, Any]:
    """The Amazon MQ sample with one message per item of ``changes`` after its own: the sample's message with its
    JSON body updated (a dict; ``"__properties__"`` updates its basic properties instead), or raw bytes as body."""
    event = sample(sample_name)
    (messages,) = event["rmqMessagesByQueue"].values()
    first = messages[0]
    for change in changes:
        message = json.loads(json.dumps(first))
        if isinstance(change, bytes):
            body = change
        else:
            change = dict(change)
            message["basicProperties"].update(change.pop("__properties__", {}))
            body = json.dumps({**json.loads(base64.b64decode(first["data"])), **change}).encode()
        message["data"] = base64.b64encode(body).decode()
        message["basicProperties"]["bodySize"] = len(body)
        messages.append(message)
    return event


def drain_dead_letters(broker_url: str, queue: str) -> list[tuple[bytes, dict[str, Any]]]:
    """What ``<queue>.dlq`` holds, oldest first (body and headers), taken off it."""
    from ringfleet.contracts.broker import dead_letter_queue

    async def run() -> list[tuple[bytes, dict[str, Any]]]:
        got = []
        async with await connect(broker_url) as conn:
            channel = await conn.channel()
            await declare_topology(channel)
            dlq = await channel.get_queue(dead_letter_queue(queue))
            while (message := await dlq.get(no_ack=True, fail=False)) is not None:
                headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in (message.headers or {}).items()}
                got.append((message.body, headers))
        return got

    return asyncio.run(run())


#: When the sample ring was last heard from (before the samples' own times).
HEARD = datetime(2025, 6, 2, 14, 0, tzinfo=UTC)
#: The samples' three instances, rank order.
MEMBERS = [instance(SAMPLE_FIRST_INSTANCE + r) for r in range(3)]


def seed_sample_ring(handler: Handler) -> Handler:
    """Empties the tables, then seeds the sample job RUNNING at generation 3 on the samples' three instances, last
    heard from at HEARD."""
    handler.reset()
    job, nodes = running_job(SAMPLE_JOB, members=3, generation=3, first=SAMPLE_FIRST_INSTANCE)
    handler.seed(job, [replace(n, last_heartbeat=HEARD, updated_at=HEARD) for n in nodes])
    return handler


def twice(handler: Handler, event: dict[str, Any]) -> Any:
    """Invokes ``handler`` with ``event``, then again: the second answers as the first and changes nothing."""
    result = handler(event)
    after = handler.tables()
    assert handler(event) == result
    assert handler.tables() == after, "the second delivery changed the tables"
    return result
