"""The control plane's side of the broker in worker tests: publish commands, read what workers publish."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence

from ringfleet.adapters.rabbitmq import connect, declare_topology, publish
from ringfleet.contracts import (
    COMMANDS_EXCHANGE,
    WORKER_EVENTS_QUEUE,
    command_routing_key,
    encode_message,
    parse_message,
)
from ringfleet.contracts.messages import CheckpointNow, CheckpointRef, Message, Reconfigure, Stop
from tests.worker.distributed import free_port


def new_job_id(prefix: str) -> str:
    """A job id no earlier test used, so a late command or event of another test never matches."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def send(url: str, command: CheckpointNow | Reconfigure | Stop, instance_id: str | None = None) -> None:
    """Publishes a command as the control plane does: to <job>.all, or to one instance."""
    key = command_routing_key(command.job_id, instance_id)
    asyncio.run(publish(url, encode_message(command), exchange=COMMANDS_EXCHANGE, routing_key=key))


def reconfigure(
    url: str, job_id: str, generation: int, members: Sequence[str], checkpoint: CheckpointRef | None = None
) -> Reconfigure:
    """Announces generation ``generation``: ``members`` in rank order, rendezvous on a free local port, and the
    checkpoint to restart from when one is given."""
    command = Reconfigure(
        job_id=job_id,
        generation=generation,
        world_size=len(members),
        ranks={instance: rank for rank, instance in enumerate(members)},
        rendezvous=f"127.0.0.1:{free_port()}",
        checkpoint=checkpoint,
    )
    send(url, command)
    return command


class WorkerEvents:
    """What the workers of one job publish on ringfleet.worker-events, gathered as it arrives."""

    def __init__(self, url: str, job_id: str) -> None:
        self.url, self.job_id = url, job_id
        self.received: list[Message] = []

    def wait_until(self, condition: Callable[[list[Message]], bool], timeout: float = 30.0) -> list[Message]:
        """Reads the queue until ``condition(everything received for the job)`` holds; fails loudly otherwise."""

        async def read() -> bool:
            connection = await connect(self.url)
            async with connection:
                channel = await connection.channel()
                await declare_topology(channel)
                queue = await channel.get_queue(WORKER_EVENTS_QUEUE)
                deadline = time.monotonic() + timeout
                while not condition(self.received):
                    if time.monotonic() > deadline:
                        return False
                    message = await queue.get(fail=False)
                    if message is None:
                        await asyncio.sleep(0.05)
                        continue
                    await message.ack()
                    parsed = parse_message(message.body)
                    if getattr(parsed, "job_id", None) == self.job_id:
                        self.received.append(parsed)
                return True

        if not asyncio.run(read()):
            kinds = [type(m).__name__ for m in self.received]
            raise AssertionError(f"worker-events of job {self.job_id} never met the condition in {timeout}s: {kinds}")
        return self.received


def declare_worker_events(url: str) -> None:
    """Declares the topology the control plane owns, so what workers publish has a queue to land in."""

    async def run() -> None:
        connection = await connect(url)
        async with connection:
            await declare_topology(await connection.channel())

    asyncio.run(run())
