"""Support for the recovery e2e tests: repositories on the local cloud's tables and a tap on the commands exchange."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aio_pika
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.router import Delivery, decode_rmq

from ringfleet.adapters.dynamodb import DynamoDbCheckpointCatalog, DynamoDbJobRepository, DynamoDbNodeRepository
from ringfleet.adapters.rabbitmq import connect, declare_topology
from ringfleet.contracts import COMMANDS_EXCHANGE
from ringfleet.core.jobs import Job
from ringfleet.core.nodes import Node
from tests.builders import later, running_job
from tests.e2e.support import carrying


class FixedClock:
    def now(self) -> Any:
        return later(0)


@dataclass
class Tables:
    jobs: DynamoDbJobRepository
    nodes: DynamoDbNodeRepository
    checkpoints: DynamoDbCheckpointCatalog

    @classmethod
    def of(cls, cloud: LocalCloud) -> Tables:
        resource = cloud.ctx.resource("dynamodb")

        def name(lid: str) -> str:
            return str(cloud.ctx.resolve({"Ref": lid}))

        clock = FixedClock()
        return cls(
            jobs=DynamoDbJobRepository(name("JobsTable"), clock=clock, boto3_resource=resource),
            nodes=DynamoDbNodeRepository(name("NodesTable"), clock=clock, boto3_resource=resource),
            checkpoints=DynamoDbCheckpointCatalog(name("CheckpointsTable"), boto3_resource=resource),
        )

    def seed(
        self, job_id: str, *, members: int = 4, first: int, heard_at: Any = None, **kw: Any
    ) -> tuple[Job, list[Node]]:
        """A RUNNING job at generation 1; its nodes heard from at ``heard_at`` (default: far in the future, so
        that no heartbeat sweep of another test takes them for silent)."""
        job, nodes = running_job(job_id, members=members, first=first, **kw)
        assert self.jobs.create(job)
        for node in nodes:
            self.nodes.put(replace(node, last_heartbeat=heard_at or later(10**6)))
        return job, nodes

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        assert job is not None
        return job


class CommandTap:
    """A durable queue bound to one job's commands, read on demand."""

    def __init__(self, broker_url: str, job_id: str) -> None:
        self.url, self.job_id, self.queue = broker_url, job_id, f"test.commands.{job_id}"
        self.seen: list[dict[str, Any]] = []
        asyncio.run(self._declare())

    async def _declare(self) -> None:
        conn = await connect(self.url)
        async with conn:
            ch = await conn.channel()
            await declare_topology(ch)
            queue = await ch.declare_queue(self.queue, durable=False, auto_delete=False)
            await queue.purge()
            await queue.bind(await ch.get_exchange(COMMANDS_EXCHANGE), routing_key=f"{self.job_id}.#")

    async def _drain(self) -> None:
        conn = await connect(self.url)
        async with conn:
            ch = await conn.channel()
            queue = await ch.get_queue(self.queue)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                self.seen.append(json.loads(message.body))

    def wait_for(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            asyncio.run(self._drain())
            if predicate(self.seen):
                return self.seen
            if time.monotonic() > deadline:
                raise TimeoutError(f"commands of {self.job_id} so far: {[c['type'] for c in self.seen]}")
            time.sleep(0.1)

    def settle(self, quiet: float = 1.0) -> list[dict[str, Any]]:
        """What was published once nothing more arrives for ``quiet`` seconds."""
        count = -1
        while count != len(self.seen):
            count = len(self.seen)
            time.sleep(quiet)
            asyncio.run(self._drain())
        return self.seen

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.seen if c["type"] == kind]


def records_handled(deliveries: list[Delivery], needle: str) -> int:
    """How many records (SQS) or messages (aws:rmq) mentioning ``needle`` were handled without failure."""
    count = 0
    for d in deliveries:
        if not d.result.ok:
            continue
        if d.event.get("eventSource") == "aws:rmq":
            count += sum(needle in body.decode(errors="replace") for body in decode_rmq(d.event))
            continue
        failed = {f.get("itemIdentifier") for f in (d.result.result or {}).get("batchItemFailures", [])}
        count += sum(needle in json.dumps(r) for r in d.event.get("Records", []) if r.get("messageId") not in failed)
    return count


def handled(cloud: LocalCloud, needle: str, count: int = 1, timeout: float = 30) -> list[Delivery]:
    """Waits until ``count`` records or messages mentioning ``needle`` were handled; returns their deliveries."""
    done = cloud.router.wait_for(lambda ds: records_handled(ds, needle) >= count, timeout=timeout)
    return [d for d in carrying(done, needle) if d.result.ok]


async def _publish_raw(url: str, body: bytes, queue: str) -> None:
    from ringfleet.contracts.broker import url_user

    conn = await connect(url)
    async with conn:
        ch = await conn.channel(publisher_confirms=True)
        await declare_topology(ch)
        # Stamped with the login's user, as every publisher of ours does (worker_events refuses what is not).
        message = aio_pika.Message(body, message_id=None, user_id=url_user(url))
        await ch.default_exchange.publish(message, routing_key=queue)


def publish_raw(url: str, body: bytes, queue: str) -> None:
    asyncio.run(_publish_raw(url, body, queue))
