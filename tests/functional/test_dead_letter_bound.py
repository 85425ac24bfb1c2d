"""A flood of junk into a consumed queue cannot fill the broker: its DLQ keeps the newest letters and drops the oldest
(issue 23 item 4). The real RabbitMQ, the topology every publisher declares."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

from ringfleet.adapters.rabbitmq import DEAD_LETTERS_KEPT, declare_topology
from ringfleet.contracts.broker import DEAD_LETTER_EXCHANGE, WORKER_EVENTS_QUEUE, dead_letter_queue

pytestmark = pytest.mark.functional


def test_a_dlq_flooded_past_its_bound_keeps_the_newest_letters(broker_url: str) -> None:
    dlq = dead_letter_queue(WORKER_EVENTS_QUEUE)
    extra = 5

    async def flood() -> tuple[int, bytes]:
        # A plain connection: a robust one answers a passive declare from what it declared, not the queue's depth.
        async with await aio_pika.connect(broker_url) as connection:
            channel = await connection.channel(publisher_confirms=True)
            await declare_topology(channel)
            queue = await channel.get_queue(dlq)
            await queue.purge()
            # when more letters than the bound are dead-lettered (as the handlers publish them: the DLX, the DLQ's key)
            exchange = await channel.get_exchange(DEAD_LETTER_EXCHANGE)
            sent = [
                exchange.publish(aio_pika.Message(f"junk {n}".encode()), routing_key=dlq)
                for n in range(DEAD_LETTERS_KEPT + extra)
            ]
            await asyncio.gather(*sent)
            # then the DLQ holds the bound, and its first letter is the first one not dropped
            depth = (await channel.declare_queue(dlq, passive=True)).declaration_result.message_count
            first = await queue.get(no_ack=True)
            await queue.purge()
            return depth or 0, first.body

    depth, first = asyncio.run(flood())
    assert depth == DEAD_LETTERS_KEPT
    assert first == f"junk {extra}".encode()
