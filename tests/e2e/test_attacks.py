"""Attacks on the broker of a local cloud with real per-role users (``ringfleet_local.broker_roles``): each is
refused by the broker, or reaches a consumer that refuses it, and nothing changes.

The local cloud runs job intake and worker events on its own vhost; the attackers hold real logins: a tenant's app
user, a worker user.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aiormq
import pamqp.exceptions
import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local.cloud import DEFAULT_BROKER_URL, LocalCloud
from ringfleet_local.vhost import url_with_vhost

from ringfleet.adapters.dynamodb import DynamoDbJobRepository
from ringfleet.adapters.rabbitmq import publish
from ringfleet.contracts import (
    APPS_EXCHANGE,
    COMMANDS_EXCHANGE,
    JOBS_QUEUE,
    WORKER_EVENTS_QUEUE,
    command_routing_key,
    encode_message,
)
from ringfleet.contracts.broker import dead_letter_queue
from ringfleet.contracts.messages import JobCancelled, Stop
from ringfleet.core.jobs import JobState
from ringfleet.core.ports import SystemClock
from tests.e2e.support import digits_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    if os.environ.get("RINGFLEET_BROKER_URL"):
        pytest.fail("the attack suite needs the local broker's rabbitmqctl: unset RINGFLEET_BROKER_URL")
    state = tmp_path_factory.mktemp("attacks") / ".ringfleet"
    with LocalCloud(only_functions={"JobIntakeFunction", "WorkerEventsFunction"}, state_dir=state) as cloud:
        assert cloud.roles is not None
        yield cloud


def _jobs(cloud: LocalCloud) -> DynamoDbJobRepository:
    table = str(cloud.ctx.resolve({"Ref": "JobsTable"}))
    return DynamoDbJobRepository(table, clock=SystemClock(), boto3_resource=cloud.ctx.resource("dynamodb"))


def _outcome(cloud: LocalCloud, job_id: str, message_type: str, after: int) -> dict[str, str]:
    """The intake outcome of the first ``message_type`` of ``job_id`` delivered after delivery number ``after``."""

    def found(deliveries: list) -> dict[str, str] | None:
        for d in deliveries[after:]:
            if d.function != "JobIntakeFunction" or not d.result.ok:
                continue
            # One outcome per message, in the batch's order.
            for body, o in zip(_bodies(d.event), d.result.result["outcomes"], strict=True):
                if o["job_id"] == job_id and message_type.encode() in body:
                    return o
        return None

    done = cloud.router.wait_for(lambda ds: found(ds) is not None, timeout=60)
    outcome = found(done)
    assert outcome is not None
    return outcome


def _bodies(event: dict) -> list[bytes]:
    from ringfleet_local.router import decode_rmq

    return decode_rmq(event)


def _admitted_job(cloud: LocalCloud, tenant: str, job_id: str) -> None:
    after = len(cloud.router.deliveries)
    RingfleetClient(cloud.roles.role_url("app", tenant)).submit(digits_job(job_id=job_id, tenant=tenant))  # type: ignore[union-attr]
    assert _outcome(cloud, job_id, "JobSubmitted", after)["outcome"] == "admitted"


async def _as_app(url: str, message: JobCancelled) -> None:
    """Published the way apps publish: to the apps exchange, stamped with the app's user."""
    await publish(
        url, encode_message(message), exchange=APPS_EXCHANGE, routing_key=JOBS_QUEUE, message_id=str(message.message_id)
    )


def test_a_tenants_app_user_cannot_cancel_another_tenants_job(cloud: LocalCloud) -> None:
    assert cloud.roles is not None
    _admitted_job(cloud, "acme", "acme-model")
    evil = cloud.roles.role_url("app", "evil")

    # when evil's app claims to be acme in the message
    after = len(cloud.router.deliveries)
    forged = JobCancelled(tenant="acme", job_id="acme-model", reason="mine now")
    asyncio.run(_as_app(evil, forged))
    outcome = _outcome(cloud, "acme-model", "JobCancelled", after)
    # then intake refuses it by the broker user, says why, and the job runs on
    assert outcome["outcome"] == "refused"
    assert "'evil', not for 'acme'" in outcome["reason"]
    # and when it claims its own tenant, acme's job reads as no job of evil's
    after = len(cloud.router.deliveries)
    honest = JobCancelled(tenant="evil", job_id="acme-model", reason="mine now")
    asyncio.run(_as_app(evil, honest))
    assert _outcome(cloud, "acme-model", "JobCancelled", after)["outcome"] == "rejected"
    job = _jobs(cloud).get("acme-model")
    assert job is not None and job.state == JobState.PENDING and job.tenant == "acme"


def test_a_message_without_user_id_is_refused(cloud: LocalCloud) -> None:
    assert cloud.roles is not None
    _admitted_job(cloud, "acme", "acme-nouser")
    message = JobCancelled(tenant="acme", job_id="acme-nouser", reason="who am I")

    async def anonymous() -> None:
        connection = await aio_pika.connect(cloud.roles.role_url("app", "acme"))  # type: ignore[union-attr]
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            apps = await channel.get_exchange(APPS_EXCHANGE)
            await apps.publish(aio_pika.Message(encode_message(message)), routing_key=JOBS_QUEUE)

    after = len(cloud.router.deliveries)
    asyncio.run(anonymous())
    outcome = _outcome(cloud, "acme-nouser", "JobCancelled", after)
    assert outcome["outcome"] == "refused" and "no user_id" in outcome["reason"]
    job = _jobs(cloud).get("acme-nouser")
    assert job is not None and job.state == JobState.PENDING


@pytest.mark.parametrize("role", ["app", "worker"])
def test_only_the_control_user_can_publish_commands(cloud: LocalCloud, role: str) -> None:
    assert cloud.roles is not None
    url = cloud.roles.role_url(role, "acme")
    stop = Stop(job_id="acme-model", generation=0, reason="forged")
    # when an app or a worker (of any job) publishes a Stop to the commands exchange: the broker refuses it
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="ACCESS_REFUSED"):
        asyncio.run(
            publish(
                url, encode_message(stop), exchange=COMMANDS_EXCHANGE, routing_key=command_routing_key("acme-model")
            )
        )
    job = _jobs(cloud).get("acme-model")
    assert job is None or job.state == JobState.PENDING


def test_a_forged_user_id_is_refused_by_the_broker(cloud: LocalCloud) -> None:
    assert cloud.roles is not None
    message = JobCancelled(tenant="acme", job_id="acme-model", reason="forged")

    async def forge() -> None:
        connection = await aio_pika.connect(cloud.roles.role_url("app", "evil"))  # type: ignore[union-attr]
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            body = aio_pika.Message(encode_message(message), user_id=cloud.roles.control_user)  # type: ignore[union-attr]
            await (await channel.get_exchange(APPS_EXCHANGE)).publish(body, routing_key=JOBS_QUEUE)

    with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed, match="user_id"):
        asyncio.run(forge())


@pytest.mark.parametrize("queue", [WORKER_EVENTS_QUEUE, dead_letter_queue(JOBS_QUEUE), JOBS_QUEUE])
def test_an_app_cannot_put_a_message_into_a_queue_by_name(cloud: LocalCloud, queue: str) -> None:
    """An app may write to the apps exchange alone: not the default exchange, which would let it speak for workers
    (a forged final checkpoint), plant dead letters (the DLQ alarms gate deployments) or flood any queue."""
    assert cloud.roles is not None
    from ringfleet.contracts.messages import CheckpointCompleted

    fake = CheckpointCompleted.model_validate(
        {
            "job_id": "acme-model",
            "instance_id": "i-0123456789abcdef0",
            "generation": 0,
            "step": 10**6,
            "final": True,
            "uri": "s3://bucket/jobs/acme-model/ckpt/000001000000/",
            "manifest_sha256": "0" * 64,
            "size_bytes": 1,
        }
    )
    url = cloud.roles.role_url("app", "acme")
    # when an app names a queue through the default exchange: the broker refuses it
    with pytest.raises(aiormq.exceptions.ChannelAccessRefused, match="ACCESS_REFUSED"):
        asyncio.run(publish(url, encode_message(fake), queue=queue, message_id=str(fake.message_id)))
    job = _jobs(cloud).get("acme-model")
    assert job is None or job.state == JobState.PENDING


def test_an_app_cannot_take_more_connections_than_its_limit(cloud: LocalCloud) -> None:
    """One tenant's app cannot exhaust the broker's connections for everyone: its user's limit refuses the next."""
    assert cloud.roles is not None
    from ringfleet_local.broker_roles import APP_USER_LIMITS

    url = cloud.roles.role_url("app", "greedy")
    limit = APP_USER_LIMITS["max-connections"]

    async def hoard() -> str:
        held = [await aio_pika.connect(url) for _ in range(limit)]
        try:
            await aio_pika.connect(url)
        except Exception as exc:  # the broker closes the connection it would not allow, saying why
            return str(getattr(exc.args[-1], "reply_text", exc))
        finally:
            for connection in held:
                await connection.close()
        return "connected"

    refused = asyncio.run(hoard())
    assert refused != "connected" and "limit" in refused.lower(), refused
    # and once it let go, it connects again
    asyncio.run(_connect_once(url))


async def _connect_once(url: str) -> None:
    async with await aio_pika.connect(url):
        pass


def test_local_credentials_prints_a_url_that_logs_in(cloud: LocalCloud, root: Path) -> None:
    assert cloud.state_dir is not None
    env = {**os.environ, "RINGFLEET_STATE_DIR": str(cloud.state_dir)}
    command = [
        sys.executable,
        "-m",
        "ringfleet_cli.main",
        "local",
        "credentials",
        "--role",
        "app",
        "--tenant",
        "globex",
    ]
    url = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=root).stdout.strip()
    assert "app-globex%40" in url
    _admitted_job_via(cloud, url, "globex", "globex-model")
    missing = subprocess.run(command[:-2], env=env, capture_output=True, text=True, cwd=root)
    assert missing.returncode == 2 and "--tenant" in missing.stderr
    unregistered = subprocess.run([*command[:-1], "initech"], env=env, capture_output=True, text=True, cwd=root)
    assert unregistered.returncode == 2 and unregistered.stdout == ""
    assert "tenant 'initech' is not registered" in unregistered.stderr
    assert "ringfleet local up --tenant initech" in unregistered.stderr


def test_a_job_of_an_unregistered_tenant_is_rejected_and_never_stored(cloud: LocalCloud) -> None:
    """An app user of a tenant the stack does not list (here made by hand) gets nothing admitted."""
    assert cloud.roles is not None
    url = cloud.roles.role_url("app", "initech")
    after = len(cloud.router.deliveries)
    RingfleetClient(url).submit(digits_job(job_id="initech-model", tenant="initech"))
    outcome = _outcome(cloud, "initech-model", "JobSubmitted", after)
    assert outcome["outcome"] == "rejected" and "tenant 'initech' is not registered" in outcome["reason"]
    assert _jobs(cloud).get("initech-model") is None


def _admitted_job_via(cloud: LocalCloud, url: str, tenant: str, job_id: str) -> None:
    after = len(cloud.router.deliveries)
    RingfleetClient(url).submit(digits_job(job_id=job_id, tenant=tenant))
    assert _outcome(cloud, job_id, "JobSubmitted", after)["outcome"] == "admitted"


def test_the_brokers_admin_login_may_do_nothing_in_the_clouds_vhost(cloud: LocalCloud) -> None:
    # given the admin login that made the vhost (guest here): once the role users exist, it lost its permissions there
    assert cloud.roles is not None
    admin = url_with_vhost(DEFAULT_BROKER_URL, cloud.roles.vhost)
    stop = Stop(job_id="acme-model", generation=0, reason="forged by the admin login")
    # when it logs in there to publish a Stop: the broker closes the connection, refusing it the vhost
    with pytest.raises(pamqp.exceptions.AMQPInternalError) as refused:
        asyncio.run(
            publish(
                admin, encode_message(stop), exchange=COMMANDS_EXCHANGE, routing_key=command_routing_key("acme-model")
            )
        )
    closed = refused.value.args[1]
    assert closed.reply_code == 530 and "access to vhost" in closed.reply_text, closed
