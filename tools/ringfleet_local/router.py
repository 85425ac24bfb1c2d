"""The event router: delivers each event source of template.yaml to its function as Lambda would.

- ``SQS``: a poller per queue, batches of ``BatchSize``; a raised error leaves the whole batch for redelivery after
  the visibility timeout; ``batchItemFailures`` (with ``ReportBatchItemFailures``) keeps only those; the queue's
  redrive policy (enforced by moto) moves a message to its DLQ after ``maxReceiveCount`` receives.
- ``MQ``: the real RabbitMQ queue consumed with aio-pika and handed over as an ``aws:rmq`` event; a failed batch
  is requeued and the quorum queue's delivery limit dead-letters a poison message.
- ``Schedule``: ``rate(...)`` schedules fire on an injectable clock (``schedule_speed`` times as often, if asked).
- What moto sends and AWS does not is dropped before delivery: the ``ObjectCreated:Put`` that moto's
  ``complete_multipart_upload`` notifies before the ``ObjectCreated:CompleteMultipartUpload`` S3 sends alone.

Rules in template.yaml target SQS queues (buffering plus partial batch failures and a DLQ per function), so moto
does the pattern matching and delivery to those queues itself; the router only plays Lambda's pollers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from ringfleet.core.ports import Clock, SystemClock
from ringfleet_local.context import CloudContext
from ringfleet_local.runtime import FunctionRuntime, InvocationResult
from ringfleet_local.shapes import complete_body, not_sent_by_aws, rmq_event, scheduled_event, sqs_event
from ringfleet_local.template import FunctionEvent, TemplateError

__all__ = ["Delivery", "Router"]

log = logging.getLogger(__name__)

_RATE = re.compile(r"^rate\((\d+)\s+(minute|minutes|hour|hours|day|days)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


@dataclass
class Delivery:
    """One invocation made by the router: which function, from which event source, with what event and outcome."""

    function: str
    source: str
    source_type: str
    event: Any
    result: InvocationResult


def rate_seconds(expression: str) -> int:
    match = _RATE.match(expression.strip())
    if not match:
        raise TemplateError(f"schedule {expression!r}: the local cloud fires rate(N minutes|hours|days) schedules")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2).rstrip("s")]


class Router:
    """Runs one poller per event source of every function; ``deliveries`` records every invocation."""

    def __init__(
        self,
        ctx: CloudContext,
        *,
        clock: Clock | None = None,
        on_delivery: Callable[[Delivery], None] | None = None,
        only: set[str] | None = None,
        schedule_speed: float = 1.0,
    ) -> None:
        self.ctx = ctx
        self.clock = clock or SystemClock()
        #: How many times as often as their rate() the schedules fire (``local up --schedule-speed``).
        self.schedule_speed = schedule_speed
        self.on_delivery = on_delivery
        self.deliveries: list[Delivery] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.runtimes: dict[str, FunctionRuntime] = {}
        self.functions = {k: v for k, v in ctx.functions.items() if only is None or k in only}

    # -- lifecycle ---------------------------------------------------------------------------------------
    def runtime(self, logical_id: str) -> FunctionRuntime:
        if logical_id not in self.runtimes:
            fn = self.ctx.function(logical_id)
            self.runtimes[logical_id] = FunctionRuntime(
                logical_id,
                fn.handler,
                self.ctx.function_environment(logical_id),
                timeout_s=fn.timeout,
                cwd=str(fn.code_uri),
            )
        return self.runtimes[logical_id]

    def start(self) -> None:
        mq_sources: list[tuple[str, FunctionEvent]] = []
        schedules: list[tuple[str, FunctionEvent]] = []
        for lid, fn in self.functions.items():
            for ev in fn.events:
                if ev.type == "SQS":
                    self._spawn(f"sqs-{lid}-{ev.name}", self._poll_sqs, lid, ev)
                elif ev.type == "MQ":
                    mq_sources.append((lid, ev))
                elif ev.type == "Schedule":
                    schedules.append((lid, ev))
                else:
                    raise TemplateError(f"{lid}.{ev.name}: event type {ev.type} is not routed by the local cloud")
        if mq_sources:
            ready = threading.Event()
            self._spawn("mq", self._run_mq, mq_sources, ready)
            if not ready.wait(30):
                raise RuntimeError("the router could not subscribe to RabbitMQ within 30 s")
        if schedules:
            self._spawn("schedules", self._run_schedules, schedules)

    def stop(self) -> None:
        self._stop.set()
        if self._loop is not None:
            # a wake-up; the MQ thread may already have seen the stop and closed its loop (a race CI hit once)
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(lambda: None)
        for t in self._threads:
            t.join(timeout=15)
        for rt in self.runtimes.values():
            rt.close()

    def _spawn(self, name: str, target: Callable[..., None], *args: Any) -> None:
        t = threading.Thread(target=self._guard, args=(target, *args), name=f"router-{name}", daemon=True)
        t.start()
        self._threads.append(t)

    def _guard(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        except Exception:
            if not self._stop.is_set():
                log.exception("router thread %s died", threading.current_thread().name)
                raise

    # -- delivery ----------------------------------------------------------------------------------------
    def invoke(self, logical_id: str, event: Any, *, source: str = "invoke", source_type: str = "Invoke") -> Delivery:
        result = self.runtime(logical_id).invoke(event)
        delivery = Delivery(logical_id, source, source_type, event, result)
        with self._cond:
            self.deliveries.append(delivery)
            self._cond.notify_all()
        if not result.ok:
            log.warning("%s (%s) failed: %s: %s", logical_id, source, result.error_type, result.error_message)
        if self.on_delivery is not None:
            self.on_delivery(delivery)
        return delivery

    def wait_for(self, predicate: Callable[[list[Delivery]], bool], timeout: float = 30.0) -> list[Delivery]:
        """Waits until ``predicate(deliveries)`` holds; raises TimeoutError with what was delivered otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.deliveries):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [f"{d.function}/{d.source}: {d.result.summary()}" for d in self.deliveries]
                    raise TimeoutError(f"condition not met after {timeout} s; deliveries so far: {seen}")
                self._cond.wait(left)
            return list(self.deliveries)

    # -- SQS -----------------------------------------------------------------------------------------------
    def _poll_sqs(self, lid: str, ev: FunctionEvent) -> None:
        props = self.ctx.resolve(dict(ev.properties), f"{lid}.{ev.name}")
        queue_arn = str(props["Queue"])
        url = self.ctx.queue_url_for_arn(queue_arn)
        batch = min(int(props.get("BatchSize", 10)), 10)
        partial = "ReportBatchItemFailures" in props.get("FunctionResponseTypes", [])
        sqs = self.ctx.client("sqs")
        while not self._stop.is_set():
            got = sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=batch,
                WaitTimeSeconds=1,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            messages = self._drop_what_aws_would_not_send(sqs, url, got.get("Messages", []))
            if not messages:
                continue
            for m in messages:
                m["Body"] = complete_body(m["Body"], account=self.ctx.account, region=self.ctx.region)
            event = sqs_event(messages, queue_arn=queue_arn, region=self.ctx.region)
            delivery = self.invoke(lid, event, source=ev.name, source_type="SQS")
            failed = self._failed_ids(delivery.result, messages, partial)
            done = [m for m in messages if m["MessageId"] not in failed]
            if done:
                sqs.delete_message_batch(
                    QueueUrl=url,
                    Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
                )

    @staticmethod
    def _drop_what_aws_would_not_send(sqs: Any, url: str, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The messages AWS would have sent; the others (moto's extra S3 notifications) are deleted unseen."""
        keep: list[dict[str, Any]] = []
        extra: list[dict[str, Any]] = []
        for m in messages:
            (extra if not_sent_by_aws(m["Body"]) else keep).append(m)
        if extra:
            sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(extra)],
            )
        return keep

    @staticmethod
    def _failed_ids(result: InvocationResult, messages: list[dict[str, Any]], partial: bool) -> set[str]:
        """Which messages stay on the queue, by Lambda's rules for SQS event sources."""
        every = {m["MessageId"] for m in messages}
        if not result.ok:
            return every
        if not partial or not isinstance(result.result, dict):
            return set()
        items = result.result.get("batchItemFailures") or []
        ids = {str(i.get("itemIdentifier")) for i in items if isinstance(i, dict)}
        # An identifier that is not in the batch (or empty) makes Lambda treat the whole batch as failed.
        return every if not ids <= every or any(not i for i in ids) else ids

    # -- MQ ------------------------------------------------------------------------------------------------
    def _run_mq(self, sources: list[tuple[str, FunctionEvent]], ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._consume_mq(sources, ready))
        finally:
            loop.close()

    async def _consume_mq(self, sources: list[tuple[str, FunctionEvent]], ready: threading.Event) -> None:
        from ringfleet.adapters.rabbitmq import connect

        connection = await connect(self.ctx.broker_url)
        async with connection:
            tasks = []
            for lid, ev in sources:
                props = self.ctx.resolve(dict(ev.properties), f"{lid}.{ev.name}")
                batch = int(props.get("BatchSize", 100))
                window = float(props.get("MaximumBatchingWindowInSeconds", 0.5))
                for queue_name in props.get("Queues", []):
                    queue = await self._subscribe(connection, queue_name, batch)
                    consumer = self._consumer(
                        connection, lid, ev.name, queue_name, queue, batch, window, str(props.get("Broker"))
                    )
                    tasks.append(asyncio.create_task(consumer))
            ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.1)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @staticmethod
    async def _subscribe(connection: Any, queue_name: str, batch: int) -> Any:
        from ringfleet.adapters.rabbitmq import declare_topology

        channel = await connection.channel()
        await channel.set_qos(prefetch_count=batch)
        await declare_topology(channel)
        return await channel.get_queue(queue_name)

    async def _consumer(
        self,
        connection: Any,
        lid: str,
        source: str,
        queue_name: str,
        queue: Any,
        batch: int,
        window: float,
        broker: str,
    ) -> None:
        """Consumes one queue for one function for as long as the router runs: a consumer that fails (its channel
        closed, a bug) is logged and started again on a new channel, so one bad moment never ends job intake."""
        while not self._stop.is_set():
            try:
                if queue is None:
                    queue = await self._subscribe(connection, queue_name, batch)
                await self._mq_batches(lid, source, queue, batch, window, broker)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("router: the consumer of RabbitMQ queue %s for %s failed; restarting it", queue_name, lid)
                with contextlib.suppress(Exception):
                    await queue.channel.close()
                queue = None
                await asyncio.sleep(1.0)

    async def _mq_batches(self, lid: str, source: str, queue: Any, batch: int, window: float, broker: str) -> None:
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        await queue.consume(inbox.put)
        while not self._stop.is_set():
            try:
                pending = [await asyncio.wait_for(inbox.get(), timeout=0.5)]
            except TimeoutError:
                continue
            # Like Lambda: gather up to BatchSize messages or until the batching window closes.
            deadline = asyncio.get_running_loop().time() + window
            while len(pending) < batch:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    pending.append(await asyncio.wait_for(inbox.get(), timeout=left))
                except TimeoutError:
                    break
            try:
                event = rmq_event(
                    [(queue.name, m.body, _properties(m), bool(m.redelivered)) for m in pending],
                    broker_arn=broker,
                )
                delivery = await asyncio.get_running_loop().run_in_executor(
                    None, functools.partial(self.invoke, lid, event, source=source, source_type="MQ")
                )
                ok = delivery.result.ok
            except Exception:
                # Requeued like a failed batch: the quorum queue's delivery limit dead-letters a message that
                # can never be handed over, and the others go on.
                log.exception("router: a batch from RabbitMQ queue %s could not be handed to %s", queue.name, lid)
                ok = False
            for m in pending:
                if ok:
                    await m.ack()
                else:
                    await m.nack(requeue=True)

    # -- schedules -----------------------------------------------------------------------------------------
    def _run_schedules(self, schedules: list[tuple[str, FunctionEvent]]) -> None:
        plan: list[tuple[str, FunctionEvent, float, datetime]] = []
        start = self.clock.now()
        for lid, ev in schedules:
            props = self.ctx.resolve(dict(ev.properties), f"{lid}.{ev.name}")
            if props.get("Enabled", True) is False or props.get("State") == "DISABLED":
                continue
            every = rate_seconds(str(props["Schedule"])) / self.schedule_speed
            plan.append((lid, ev, every, start + timedelta(seconds=every)))
        while not self._stop.wait(0.1):
            now = self.clock.now()
            for i, (lid, ev, every, due) in enumerate(plan):
                if now >= due:
                    name = f"{self.ctx.stack}-{lid}-{ev.name}"
                    rule_arn = f"arn:aws:events:{self.ctx.region}:{self.ctx.account}:rule/{name}"
                    event = scheduled_event(rule_arn, due, account=self.ctx.account, region=self.ctx.region)
                    self.invoke(lid, event, source=ev.name, source_type="Schedule")
                    plan[i] = (lid, ev, every, due + timedelta(seconds=every))


def _jsonable(value: Any) -> Any:
    """An AMQP header value as JSON: every type an AMQP 0-9-1 field table can hold (decimals, timestamps, byte
    arrays, nested tables and arrays) has a rendering, so no legal message can stop the consumer."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bytes": list(bytes(value))}  # how Lambda's aws:rmq event renders byte headers
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _properties(message: Any) -> dict[str, Any]:
    ts = message.timestamp
    return {
        "content_type": message.content_type,
        "content_encoding": message.content_encoding,
        "headers": _jsonable(dict(message.headers or {})),
        "delivery_mode": int(message.delivery_mode.value) if message.delivery_mode else None,
        "priority": message.priority,
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "expiration": str(message.expiration) if message.expiration else None,
        "message_id": message.message_id,
        # Lambda renders the AMQP timestamp like "Jan 1, 1970, 12:33:41 AM".
        "timestamp": ts.strftime("%b %-d, %Y, %-I:%M:%S %p") if ts else None,
        "type": message.type,
        "user_id": message.user_id,
        "app_id": message.app_id,
        "cluster_id": message.cluster_id,
    }


def decode_rmq(event: dict[str, Any]) -> list[bytes]:
    """The message bodies of an ``aws:rmq`` event, in order (for tests and tools)."""
    return [base64.b64decode(m["data"]) for ms in event.get("rmqMessagesByQueue", {}).values() for m in ms]


def dumps(event: Any) -> str:
    return json.dumps(event, indent=2, default=str)
