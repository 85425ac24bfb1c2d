"""CommandPublisher over AMQP (aio-pika): commands to a job's workers on the commands topic exchange.

One connection per Lambda execution environment, kept between invocations on a private event loop: an AMQPS
handshake with Amazon MQ costs tens of milliseconds, more than the rest of a recovery decision. A publish that
fails drops the connection and is tried again on a fresh one, inside the invocation, with jittered exponential
backoff (0.2 s, 0.4 s, 0.8 s, ... within a budget of 5 s): a broker restarting or refusing a connection costs
seconds, not the queue's visibility timeout — a spot warning gives two minutes. Only when the budget is spent does
the handler's error make the event come back; the job's outbox makes sure the commands go out then. A retried
publish may send a command twice (confirmed before the failure); its message id says so to the workers, which
ignore a command they have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aio_pika

from ringfleet.contracts.broker import (
    COMMANDS_EXCHANGE,
    INSTANCE_QUEUE_ARGUMENTS,
    command_routing_key,
    instance_queue,
    instance_routing_keys,
)

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection

    from ringfleet.contracts import CheckpointNow, Reconfigure, Stop

__all__ = ["AmqpCommandPublisher", "credentials_from_secret"]

log = logging.getLogger(__name__)

#: Publishing retries on a fresh connection: first pause PUBLISH_BACKOFF seconds (doubling, jittered), none begun
#: once PUBLISH_BUDGET seconds have passed since the first try.
PUBLISH_BACKOFF = 0.2
PUBLISH_BUDGET = 5.0


def credentials_from_secret(secret_id: str, *, secrets_client: Any | None = None) -> tuple[str, str]:
    """``(username, password)`` of the broker secret (JSON with those keys), as Amazon MQ event sources read it."""
    import boto3

    client = secrets_client or boto3.client("secretsmanager")
    secret = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])
    return secret["username"], secret["password"]


async def _cancel_others() -> None:
    """Ends what the connection left running (reader tasks), so nothing is pending on a loop about to close."""
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class AmqpCommandPublisher:
    """Publishes commands, each confirmed by the broker, with its message id and type as AMQP properties."""

    def __init__(
        self,
        url: str | Callable[[], str],
        *,
        backoff: float = PUBLISH_BACKOFF,
        budget: float = PUBLISH_BUDGET,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._url = url
        self._backoff = backoff
        self._budget = budget
        self._sleep = sleep
        self._loop = asyncio.new_event_loop()
        self._lock = threading.Lock()
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None
        #: The user the connection logs in as, stamped on every command (``user_id``).
        self._user: str | None = None
        self._channel: AbstractChannel | None = None

    def publish(self, commands: Sequence[CheckpointNow | Reconfigure | Stop]) -> None:
        if not commands:
            return
        self._retrying(lambda: self._publish(commands))

    def dead_letter(
        self,
        queue: str,
        body: bytes,
        *,
        headers: Mapping[str, Any],
        reason: str,
        message_id: str | None,
        sender: str | None,
    ) -> None:
        """Puts a message its consumer refused for good in ``queue``'s DLQ (``<queue>.dlq``, through the dead-letter
        exchange) with its body and headers as received, ``x-ringfleet-reason`` saying why and
        ``x-ringfleet-user-id`` naming its sender; confirmed by the broker, retried as commands are. Raises when the
        DLQ cannot take it (unroutable, broker down past the budget): the batch then fails and comes back."""
        from ringfleet.contracts.broker import REASON_HEADER, SENDER_HEADER

        stamped = {**headers, REASON_HEADER: reason[:4096], SENDER_HEADER: sender or ""}
        self._retrying(lambda: self._dead_letter(queue, body, stamped, message_id))

    def _retrying(self, attempt_once: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Runs ``attempt_once`` on the connection; a failure drops it and tries again on a fresh one, with jittered
        exponential backoff, until PUBLISH_BUDGET is spent (then the last error is raised)."""
        with self._lock:
            started, pause, attempt = time.monotonic(), self._backoff, 1
            while True:
                try:
                    self._loop.run_until_complete(attempt_once())
                    return
                except Exception as exc:
                    self._loop.run_until_complete(self._drop())
                    wait = random.uniform(pause / 2, pause)
                    if time.monotonic() - started + wait > self._budget:
                        raise
                    log.warning(
                        "publish attempt %d failed (%s: %s); again in %.2f s", attempt, type(exc).__name__, exc, wait
                    )
                except BaseException:
                    self._loop.run_until_complete(self._drop())
                    raise
                self._sleep(wait)
                pause, attempt = pause * 2, attempt + 1

    def close(self) -> None:
        with self._lock:
            if self._loop.is_closed():
                return
            self._loop.run_until_complete(self._drop())
            self._loop.run_until_complete(_cancel_others())
            self._loop.close()

    async def _publish(self, commands: Sequence[CheckpointNow | Reconfigure | Stop]) -> None:
        exchange = await self._ready()
        for command in commands:
            if command.type == "Reconfigure":
                await self._open_mailboxes(exchange, command)
            message = aio_pika.Message(
                command.model_dump_json().encode(),
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                message_id=str(command.message_id),
                type=command.type,
                app_id="ringfleet-control",
                # The broker checks it is this connection's user; workers obey only the control plane's user.
                user_id=self._user,
            )
            await exchange.publish(message, routing_key=command_routing_key(command.job_id), timeout=10)

    async def _dead_letter(self, queue: str, body: bytes, headers: dict[str, Any], message_id: str | None) -> None:
        from ringfleet.adapters.rabbitmq import declare_topology
        from ringfleet.contracts.broker import DEAD_LETTER_EXCHANGE, dead_letter_queue

        await self._ready()
        assert self._channel is not None
        # The DLQs and their bindings, as every declarer makes them: a dead letter never vanishes for want of them.
        await declare_topology(self._channel)
        exchange = await self._channel.get_exchange(DEAD_LETTER_EXCHANGE)
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            headers=headers,
            app_id="ringfleet-control",
            user_id=self._user,
        )
        # mandatory: a DLQ that is missing fails the publish instead of dropping the message.
        await exchange.publish(message, routing_key=dead_letter_queue(queue), mandatory=True, timeout=10)

    async def _open_mailboxes(self, exchange: AbstractExchange, command: Reconfigure) -> None:
        """Declares each named instance's mailbox before the command goes out, so a worker still starting gets it."""
        assert self._channel is not None
        for instance_id in command.ranks:
            queue = await self._channel.declare_queue(
                instance_queue(instance_id), durable=True, arguments=dict(INSTANCE_QUEUE_ARGUMENTS)
            )
            for key in instance_routing_keys(command.job_id, instance_id):
                await queue.bind(exchange, routing_key=key)

    async def _ready(self) -> AbstractExchange:
        if self._exchange is None:
            from ringfleet.adapters.rabbitmq import connect
            from ringfleet.contracts.broker import url_user

            url = self._url() if callable(self._url) else self._url
            self._user = url_user(url)
            self._connection = await connect(url)
            channel = self._channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
        return self._exchange

    async def _drop(self) -> None:
        connection, self._connection, self._exchange, self._channel = self._connection, None, None, None
        if connection is not None:
            # A broken connection is being thrown away anyway: failing to close it changes nothing.
            with contextlib.suppress(Exception):
                await connection.close()
