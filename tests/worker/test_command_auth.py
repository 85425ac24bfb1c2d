"""Workers obey only the control plane: a worker with the worker user's login (``ringfleet_local.broker_roles``)
drops a command another user sent to its mailbox, and refuses a Reconfigure whose rendezvous is no member's."""

from __future__ import annotations

import asyncio
import logging
import queue
import uuid
from collections.abc import Iterator
from urllib.parse import unquote, urlsplit

import aio_pika
import pytest
from ringfleet_local.broker_roles import BrokerRoles, create_roles, delete_roles

from ringfleet.adapters.commands import AmqpCommandPublisher
from ringfleet.contracts import encode_message, instance_queue
from ringfleet.contracts.messages import Reconfigure, Stop
from tests.worker.broker import declare_worker_events, new_job_id
from training_worker.control import ControlChannel

pytestmark = [pytest.mark.worker, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def roles(broker_url: str) -> Iterator[BrokerRoles]:
    vhost = unquote(urlsplit(broker_url).path.lstrip("/"))
    made = create_roles(broker_url, vhost)
    declare_worker_events(made.role_url("control"))  # the control plane owns the topology
    yield made
    delete_roles(made)


def _reconfigure(job: str, instance: str, rendezvous: str, hosts: dict[str, str]) -> Reconfigure:
    return Reconfigure(job_id=job, generation=1, world_size=1, ranks={instance: 0}, rendezvous=rendezvous, hosts=hosts)


def _as_worker(roles: BrokerRoles, command: Reconfigure | Stop, instance: str) -> None:
    """Publishes ``command`` with the worker login through the default exchange, into ``instance``'s mailbox."""

    async def run() -> None:
        connection = await aio_pika.connect(roles.role_url("worker"))
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            body = aio_pika.Message(encode_message(command), user_id=roles.worker_user)
            await channel.default_exchange.publish(body, routing_key=instance_queue(instance))

    asyncio.run(run())


def test_a_worker_obeys_the_control_user_only(
    roles: BrokerRoles, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("RINGFLEET_CONTROL_USER", roles.control_user)
    job, instance = new_job_id("auth"), f"i-{uuid.uuid4().hex[:17]}"
    got: queue.Queue[object] = queue.Queue()
    channel = ControlChannel(roles.role_url("worker"), None, instance, got.put)
    channel.start()
    control = AmqpCommandPublisher(roles.role_url("control"))
    try:
        with caplog.at_level(logging.WARNING, logger="training_worker.control"):
            # a worker login (any job's) writes a Reconfigure straight into this instance's mailbox
            forged = _reconfigure(job, instance, "203.0.113.7:29500", {instance: "203.0.113.7"})
            _as_worker(roles, forged, instance)
            # the control plane's Reconfigure with a rendezvous on no member's address
            off = _reconfigure(job, instance, "203.0.113.9:29501", {instance: "10.0.0.5"})
            control.publish([off])
            # and then a good one: on the member's address
            good = _reconfigure(job, instance, "10.0.0.5:29502", {instance: "10.0.0.5"})
            control.publish([good])
            received = got.get(timeout=20)
        # then only the good one arrives, and the unplaced worker was placed by it alone
        assert received == good and got.empty()
        assert channel.job_id == job
        refusals = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
        assert any("not by the control plane's" in m for m in refusals), refusals
        assert any("not on a member's address" in m for m in refusals), refusals
        # a Stop the worker login sends to the job's mailbox is dropped too
        _as_worker(roles, Stop(job_id=job, generation=1, reason="forged"), instance)
        with pytest.raises(queue.Empty):
            got.get(timeout=2)
    finally:
        control.close()
        channel.close()
