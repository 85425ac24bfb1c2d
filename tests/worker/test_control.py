"""Control channel against a real RabbitMQ, the spot notice endpoint, and the worker's command handling."""

from __future__ import annotations

import asyncio
import queue
import uuid

import aio_pika
import pytest

from ringfleet.adapters.rabbitmq import publish
from ringfleet.contracts import (
    COMMANDS_EXCHANGE,
    WORKER_EVENTS_QUEUE,
    command_routing_key,
    encode_message,
    parse_message,
)
from ringfleet.contracts.messages import CheckpointNow, Heartbeat, Stop
from tests.conftest import purge_queue
from tests.worker.broker import new_job_id
from tests.worker.conftest import InstanceMetadata
from training_worker.control import ControlChannel, SpotNoticeWatcher
from training_worker.runtime import Runtime, RuntimeConfig

pytestmark = pytest.mark.worker

# A job and an instance of its own: a durable mailbox left by an earlier run (say a demo) never feeds this test.
JOB, INSTANCE = new_job_id("control"), f"i-{uuid.uuid4().hex[:17]}"


def _send(url: str, message: CheckpointNow | Stop, instance: str | None) -> None:
    asyncio.run(
        publish(
            url, encode_message(message), exchange=COMMANDS_EXCHANGE, routing_key=command_routing_key(JOB, instance)
        )
    )


def _get_one(url: str, queue_name: str) -> bytes:
    async def get() -> bytes:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            q = await channel.get_queue(queue_name)
            for _ in range(100):
                message = await q.get(fail=False)
                if message is not None:
                    await message.ack()
                    return message.body
                await asyncio.sleep(0.05)
        raise AssertionError(f"nothing arrived on {queue_name}")

    return asyncio.run(get())


def test_commands_for_this_instance_and_for_the_whole_job_arrive_and_messages_go_out(broker_url: str) -> None:
    # given a control channel for one instance of the job, and an empty worker-events queue
    purge_queue(broker_url, WORKER_EVENTS_QUEUE)
    received: queue.Queue[object] = queue.Queue()
    channel = ControlChannel(broker_url, JOB, INSTANCE, received.put)
    channel.start()
    try:
        # when one command is sent to this instance, one to <job>.all and one to another instance
        _send(broker_url, CheckpointNow(job_id=JOB, generation=3, reason="spot-interruption"), INSTANCE)
        _send(broker_url, Stop(job_id=JOB, generation=3, reason="cancelled"), "i-0ffff0000ffff0000")
        _send(broker_url, Stop(job_id=JOB, generation=3, reason="done"), None)
        # then the two meant for it arrive, in order, as parsed commands
        first, second = received.get(timeout=10), received.get(timeout=10)
        assert isinstance(first, CheckpointNow) and isinstance(second, Stop) and second.reason == "done"
        assert received.empty()
        # and a heartbeat it publishes lands on the worker-events queue
        beat = Heartbeat(
            job_id=JOB,
            instance_id=INSTANCE,
            generation=3,
            rank=0,
            world_size=2,
            step=7,
            loss=0.5,
            samples_per_second=100.0,
        )
        channel.publish(beat).result(10)
        assert parse_message(_get_one(broker_url, WORKER_EVENTS_QUEUE)) == beat
    finally:
        channel.close()


def test_a_spot_notice_is_noticed_once_the_metadata_endpoint_serves_it(
    metadata: tuple[str, type[InstanceMetadata]],
) -> None:
    # given a watcher polling an endpoint that has no notice yet
    url, handler = metadata
    noticed: queue.Queue[dict[str, str]] = queue.Queue()
    watcher = SpotNoticeWatcher(url, noticed.put, interval_s=0.05)
    assert watcher.check() is None
    watcher.start()
    # when the notice appears, then the watcher reports it
    handler.notice = {"action": "terminate", "time": "2026-11-28T03:40:00Z"}
    assert noticed.get(timeout=5)["action"] == "terminate"
    watcher.stop()


def test_the_worker_ignores_commands_of_an_older_generation() -> None:
    # given a worker in generation 5
    worker = Runtime(RuntimeConfig(job_id=JOB, instance_id=INSTANCE))
    worker.ring.passed_over(5)
    # when a Stop of generation 4 and a CheckpointNow of generation 5 arrive
    worker.notices.on_command(Stop(job_id=JOB, generation=4, reason="stale"))
    worker.notices.on_command(CheckpointNow(job_id=JOB, generation=5, reason="rebalance"))
    # then only the checkpoint is pending for the next step boundary
    assert worker.flags.take() == [False, False, True, False]
