"""Shared fixtures: the repository root, and a loud failure when RabbitMQ is missing (never a skip)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BROKER_URL = os.environ.get("RINGFLEET_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    """The broker, on a vhost of this test session's own: test runs side by side never take each other's
    messages."""
    from ringfleet_local.cloud import broker_reachable
    from ringfleet_local.vhost import create_vhost, delete_vhost

    if not broker_reachable(BROKER_URL):
        pytest.fail(f"RabbitMQ does not answer at {BROKER_URL}: start it with `rabbitmq-server -detached`")
    own = create_vhost(BROKER_URL, prefix="ringfleet-tests")
    if own is None:
        yield BROKER_URL
        return
    vhost, url = own
    yield url
    delete_vhost(vhost)


def purge_queue(url: str, queue: str) -> None:
    """Empties a broker queue (declaring the topology first) so a test starts from a known state."""
    import asyncio

    from ringfleet.adapters.rabbitmq import connect, declare_topology

    async def run() -> None:
        conn = await connect(url)
        async with conn:
            ch = await conn.channel()
            await declare_topology(ch)
            await (await ch.get_queue(queue)).purge()

    asyncio.run(run())
