"""The broker's topology and confirmed publishing with aio-pika (RabbitMQ locally, Amazon MQ in AWS)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aio_pika

from ringfleet.contracts.broker import (
    APPS_EXCHANGE,
    COMMANDS_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    JOBS_QUEUE,
    MQ_QUEUES,
    dead_letter_queue,
    tenant_of_user,
    url_user,
)

if TYPE_CHECKING:
    from aio_pika.abc import AbstractChannel, AbstractRobustConnection

__all__ = [
    "DEAD_LETTERS_KEPT",
    "DELIVERY_LIMIT",
    "connect",
    "dead_letter_queue_arguments",
    "declare_topology",
    "publish",
    "queue_arguments",
]

#: A message redelivered this many times (a consumer that keeps failing on it) is dead-lettered.
DELIVERY_LIMIT = 3
#: The dead letters a DLQ keeps (and at most 64 MiB of them): the newest.
DEAD_LETTERS_KEPT = 10_000


def dead_letter_queue_arguments() -> dict[str, Any]:
    """A DLQ is bounded, dropping its oldest letters past the bound: anyone who may publish to a consumed queue can
    have messages dead-lettered, and an unbounded DLQ would let one flood fill the broker's memory until its alarm
    blocks every publisher (heartbeats late, healthy workers swept as lost). Its depth alarm still fires, and the
    newest letters, the ones an operator looks at first, are kept."""
    return {"x-max-length": DEAD_LETTERS_KEPT, "x-max-length-bytes": 64 << 20, "x-overflow": "drop-head"}


def queue_arguments(queue: str) -> dict[str, Any]:
    """Arguments of a consumed queue. Every declarer must pass the same ones, or RabbitMQ refuses the declare.

    Quorum queues count deliveries themselves (``x-delivery-limit``), so a poison message reaches the DLQ
    without any consumer having to keep count, the same on RabbitMQ and on Amazon MQ.
    """
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": dead_letter_queue(queue),
    }


async def connect(url: str) -> AbstractRobustConnection:
    """A connection that reconnects (and re-declares what was declared on it) after a broker restart."""
    return await aio_pika.connect_robust(url, timeout=10)


async def declare_topology(channel: AbstractChannel) -> None:
    """Declares the consumed queues with their DLQs, the commands exchange and the apps exchange (bound to the jobs
    queue); safe to call any number of times."""
    dlx = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.DIRECT, durable=True)
    apps = await channel.declare_exchange(APPS_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True)
    for queue in MQ_QUEUES:
        dlq = await channel.declare_queue(
            dead_letter_queue(queue), durable=True, arguments=dead_letter_queue_arguments()
        )
        await dlq.bind(dlx, routing_key=dead_letter_queue(queue))
        declared = await channel.declare_queue(queue, durable=True, arguments=queue_arguments(queue))
        if queue == JOBS_QUEUE:
            await declared.bind(apps)
    await channel.declare_exchange(COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)


async def publish(
    url: str,
    body: bytes,
    *,
    queue: str | None = None,
    exchange: str | None = None,
    routing_key: str | None = None,
    message_id: str | None = None,
    headers: dict[str, Any] | None = None,
) -> None:
    """Publishes one persistent message and waits for the broker's confirm.

    Give ``queue`` to publish through the default exchange, or ``exchange`` with ``routing_key``. The message
    carries its publisher's user as ``user_id``, which RabbitMQ checks against the connection's: the consumer knows
    who sent it. An app user may configure nothing, so it publishes into the topology the control plane declared.
    """
    if (queue is None) == (exchange is None):
        raise ValueError("publish needs either queue= or exchange= (with routing_key=)")
    user = url_user(url)
    connection = await connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        if tenant_of_user(user) is None:
            await declare_topology(channel)
        message = aio_pika.Message(
            body,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message_id,
            headers=headers or {},
            user_id=user,
        )
        if queue is not None:
            await channel.default_exchange.publish(message, routing_key=queue, mandatory=True)
        else:
            target = await channel.get_exchange(str(exchange))
            # Mandatory where a queue must take it (the apps exchange); a command may find no mailbox bound yet.
            await target.publish(message, routing_key=routing_key or "", mandatory=exchange == APPS_EXCHANGE)
