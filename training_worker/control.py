"""Control channel: commands from RabbitMQ (aio-pika, robust), worker messages out, SIGTERM and spot notices."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any
from uuid import UUID

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from ringfleet.contracts import (
    COMMANDS_EXCHANGE,
    INSTANCE_QUEUE_ARGUMENTS,
    WORKER_EVENTS_QUEUE,
    encode_message,
    instance_queue,
    instance_routing_keys,
    parse_message,
)
from ringfleet.contracts.broker import broker_url, require_tls, url_user
from ringfleet.contracts.messages import CheckpointNow, Message, Reconfigure, Stop
from training_worker.membership import check_rendezvous

__all__ = ["ControlChannel", "SpotNoticeWatcher", "install_sigterm"]

log = logging.getLogger("training_worker.control")

Command = CheckpointNow | Reconfigure | Stop


def broker_url_from_secret(secret_id: str, endpoint: str, *, secrets_client: Any | None = None) -> str:
    """The worker's broker URL from its Secrets Manager secret (JSON ``username``/``password``, as Amazon MQ's) and
    the broker's endpoint (which carries no credentials): the password never sits in an argument, the instance's
    user data or an environment variable, and a new password takes effect at the next start."""
    import boto3

    client = secrets_client or boto3.client("secretsmanager")
    try:
        secret = json.loads(client.get_secret_value(SecretId=secret_id)["SecretString"])
        return broker_url(endpoint, secret["username"], secret["password"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"broker secret {secret_id}: needs JSON with username and password ({e})") from e


class ControlChannel:
    """Consumes this job's and this instance's commands, publishes worker messages; runs its own event loop thread.

    The connection is aio-pika's robust one: after a broker restart it reconnects and re-declares the exchange,
    queue and bindings, so commands keep arriving without the worker noticing.
    """

    def __init__(self, url: str, job_id: str | None, instance_id: str, on_command: Callable[[Command], None]) -> None:
        #: None: the worker booted with its instance before any job was placed there; the control plane binds the
        #: instance's mailbox to the job's commands when it places it, and the first command names the job.
        # amqps:// only, but to a broker on this machine or in the local cloud: refused here, before any connection.
        self.url, self.job_id, self.instance_id = require_tls(url), job_id, instance_id
        self.on_command = on_command
        #: This worker's broker user, stamped on what it publishes (``user_id``, checked by the broker).
        self.user = url_user(url)
        #: The only user whose commands this worker obeys: RINGFLEET_CONTROL_USER, or, where it is unset, the
        #: worker's own login (one login shared by everyone, as on a test broker: only its holders can publish).
        self.control_user = os.environ.get("RINGFLEET_CONTROL_USER") or self.user or "guest"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="control-channel", daemon=True)
        self._connection: AbstractRobustConnection | None = None
        #: The ids of the last commands received, to drop a redelivered or re-published duplicate.
        self._seen: deque[UUID] = deque(maxlen=1024)
        self._channel: aio_pika.abc.AbstractChannel | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._connect(), self._loop).result(timeout)

    async def _connect(self) -> None:
        self._connection = await aio_pika.connect_robust(self.url)
        self._channel = await self._connection.channel()
        exchange = await self._commands_exchange()
        # The instance's durable mailbox (see ringfleet.contracts.broker.instance_queue): a Reconfigure sent while
        # this process was starting is waiting there.
        queue = await self._channel.declare_queue(
            instance_queue(self.instance_id), durable=True, arguments=dict(INSTANCE_QUEUE_ARGUMENTS)
        )
        if self.job_id is not None:
            for key in instance_routing_keys(self.job_id, self.instance_id):
                await queue.bind(exchange, routing_key=key)
        await queue.consume(self._on_message)

    async def _commands_exchange(self) -> aio_pika.abc.AbstractExchange:
        """The commands exchange: looked up (a worker user may not declare it: the control plane owns it), and
        declared only where the lookup finds none and the login may (a test broker before any control plane)."""
        assert self._connection is not None and self._channel is not None
        try:
            return await self._channel.declare_exchange(COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            self._channel = await self._connection.channel()
            return await self._channel.declare_exchange(COMMANDS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        async with message.process(ignore_processed=True):
            try:
                command = parse_message(message.body)
            except Exception:
                log.exception("dropping a command that does not parse")
                return
            if not isinstance(command, CheckpointNow | Reconfigure | Stop):
                log.warning("dropping %s: not a command", type(command).__name__)
                return
            refused = self._refusal(command, message.user_id)
            if refused is not None:
                log.warning("refusing %s %s: %s", command.type, command.message_id, refused)
                return
            if command.message_id in self._seen:
                # The control plane re-publishes what a crashed run may not have (its outbox): seen once is enough.
                log.info("dropping %s %s: already received", command.type, command.message_id)
                return
            self._seen.append(command.message_id)
            if self.job_id is None and isinstance(command, Reconfigure):
                self.job_id = command.job_id  # placed: this instance now serves that job
                log.info("placed on job %s", self.job_id)
            if command.job_id != self.job_id:
                log.warning("dropping %s: not a command for job %s", type(command).__name__, self.job_id)
                return
            self.on_command(command)

    def _refusal(self, command: Command, user: str | None) -> str | None:
        """Why ``command`` is not obeyed (None: it is): only the control plane's user commands a worker, and a
        Reconfigure may put the rendezvous only on one of its members. Checked before an unplaced worker adopts a
        Reconfigure's job, so a forged one cannot place it."""
        if user != self.control_user:
            return f"sent by broker user {user!r}, not by the control plane's {self.control_user!r}"
        return check_rendezvous(command) if isinstance(command, Reconfigure) else None

    def publish(self, message: Message) -> Future[None]:
        """Publishes to the worker-events queue through the default exchange; returns when the broker has it."""
        return asyncio.run_coroutine_threadsafe(self._publish(message), self._loop)

    async def _publish(self, message: Message) -> None:
        assert self._channel is not None
        body = aio_pika.Message(
            encode_message(message),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(message.message_id),
            type=message.type,
            user_id=self.user,
        )
        await self._channel.default_exchange.publish(body, routing_key=WORKER_EVENTS_QUEUE)

    def close(self) -> None:
        async def shut() -> None:
            if self._connection is not None:
                await self._connection.close()

        if self._thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
            finally:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(10)


class SpotNoticeWatcher:
    """Polls the instance-metadata spot notice (``/latest/meta-data/spot/instance-action``); 404 means none yet."""

    PATH = "/latest/meta-data/spot/instance-action"

    #: Every half second: the endpoint is the instance's own (no network, no API limit), and the sooner a leaving
    #: worker knows, the sooner the others train on without it.
    INTERVAL_S = 0.5

    def __init__(
        self, base_url: str, on_notice: Callable[[dict[str, str]], None], interval_s: float = INTERVAL_S
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.on_notice = on_notice
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spot-notice", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _token(self) -> str | None:
        # IMDSv2 first; an endpoint without tokens (IMDSv1, a test server) just answers without one.
        request = urllib.request.Request(
            self.base_url + "/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
        )
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.read().decode() or None
        except (urllib.error.URLError, OSError):
            return None

    def check(self) -> dict[str, str] | None:
        token = self._token()
        headers = {"X-aws-ec2-metadata-token": token} if token else {}
        try:
            request = urllib.request.Request(self.base_url + self.PATH, headers=headers)
            with urllib.request.urlopen(request, timeout=2) as r:
                notice = json.loads(r.read().decode())
                return {str(k): str(v) for k, v in notice.items()}
        except urllib.error.HTTPError as e:
            if e.code != 404:
                log.warning("instance metadata answered %s for the spot notice", e.code)
        except (urllib.error.URLError, OSError, ValueError) as e:
            log.debug("instance metadata not reachable: %s", e)
        return None

    def _run(self) -> None:
        while not self._stop.is_set():
            notice = self.check()
            if notice is not None:
                log.warning("spot interruption notice: %s", notice)
                self.on_notice(notice)
                return
            self._stop.wait(self.interval_s)


def install_sigterm(on_term: Callable[[], None]) -> None:
    """SIGTERM (ECS/EC2 stopping the container) asks for a checkpoint at the next step boundary, then an exit."""
    signal.signal(signal.SIGTERM, lambda signum, frame: on_term())
