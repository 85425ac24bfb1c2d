"""Names on the broker (RabbitMQ locally, Amazon MQ in AWS), and the rules of its URLs: part of the wire contract.

The URL rules live here, not in an adapter, because the worker (which ships only ``ringfleet.contracts``) obeys
them too: ``require_tls`` (amqps:// off this machine), ``broker_url`` (credentials into an endpoint),
``url_user`` (who a URL logs in as).
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import quote, unquote, urlsplit, urlunsplit

__all__ = [
    "APPS_EXCHANGE",
    "APP_USER_PREFIX",
    "COMMANDS_EXCHANGE",
    "DEAD_LETTER_EXCHANGE",
    "INSTANCE_QUEUE_ARGUMENTS",
    "JOBS_QUEUE",
    "MQ_QUEUES",
    "REASON_HEADER",
    "SENDER_HEADER",
    "WORKER_EVENTS_QUEUE",
    "app_user",
    "broker_url",
    "command_routing_key",
    "dead_letter_queue",
    "instance_queue",
    "instance_routing_keys",
    "require_tls",
    "tenant_of_user",
    "url_user",
]

#: App messages (JobSubmitted, JobCancelled); consumed by the job_intake function.
JOBS_QUEUE = "ringfleet.jobs"
#: Worker messages (Heartbeat, CheckpointCompleted, WorkerFailed); consumed by worker_events.
WORKER_EVENTS_QUEUE = "ringfleet.worker-events"
#: The queues Lambda consumes through MQ event sources, in the order template.yaml lists them.
MQ_QUEUES = (JOBS_QUEUE, WORKER_EVENTS_QUEUE)
#: Commands to workers (CheckpointNow, Reconfigure, Stop): a topic exchange.
COMMANDS_EXCHANGE = "ringfleet.commands"
#: Where apps publish job messages: a fanout exchange bound to ``JOBS_QUEUE`` alone. An app user may write to it and
#: nothing else, not the default exchange, which would let it put messages into any queue by name (forged dead
#: letters, a flood of another queue).
APPS_EXCHANGE = "ringfleet.apps"
#: Messages a consumer rejected for good are dead-lettered here, routed by their queue's name.
DEAD_LETTER_EXCHANGE = "ringfleet.dlx"


def dead_letter_queue(queue: str) -> str:
    """The queue that keeps what ``queue`` rejected."""
    return f"{queue}.dlq"


#: A message a handler dead-letters itself (invalid, or from a sender that may not send it) carries its original
#: body and headers plus these: why it was refused, and the broker user that sent it (the dead letter's own
#: ``user_id`` is the control plane's, which published it).
REASON_HEADER = "x-ringfleet-reason"
SENDER_HEADER = "x-ringfleet-user-id"


def command_routing_key(job_id: str, instance_id: str | None = None) -> str:
    """Routing key of a command: one instance of a job, or every worker of it (``<job>.all``)."""
    return f"{job_id}.{instance_id or 'all'}"


#: An instance's command queue lives an hour past its last consumer, so a dead instance leaves nothing behind.
INSTANCE_QUEUE_ARGUMENTS = {"x-expires": 3_600_000}


def instance_queue(instance_id: str) -> str:
    """The durable mailbox of one instance's commands.

    The control plane declares it (bound to :func:`instance_routing_keys`) before it sends the first Reconfigure
    naming the instance, and the worker consumes it: a command sent while the worker process is still starting
    waits for it instead of being dropped by the exchange. Both sides declare it with INSTANCE_QUEUE_ARGUMENTS.
    """
    return f"{COMMANDS_EXCHANGE}.{instance_id}"


def instance_routing_keys(job_id: str, instance_id: str) -> tuple[str, str]:
    """What an instance's mailbox receives: commands for it, and commands for every worker of its job."""
    return command_routing_key(job_id, instance_id), command_routing_key(job_id)


#: Broker users are per role (see the README's "Broker users"): one app user per tenant, named ``app-<tenant>``,
#: optionally qualified by ``@<deployment>`` where one broker serves several (each local cloud on its own vhost).
#: RabbitMQ refuses a message whose ``user_id`` is not its publisher's user, so the name proves the sender.
APP_USER_PREFIX = "app-"


def app_user(tenant: str, deployment: str | None = None) -> str:
    """The broker user of ``tenant``'s apps."""
    return f"{APP_USER_PREFIX}{tenant}" + (f"@{deployment}" if deployment else "")


def tenant_of_user(user: str | None) -> str | None:
    """The tenant whose app user ``user`` is; None for any other user (or none)."""
    if not user or not user.startswith(APP_USER_PREFIX):
        return None
    return user[len(APP_USER_PREFIX) :].split("@", 1)[0] or None


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_tls(url: str, *, local: bool | None = None) -> str:
    """``url`` if it may carry broker credentials and commands: ``amqps://`` anywhere, plain ``amqp://`` only to this
    machine (loopback) or inside the local cloud (``local``; default: RINGFLEET_LOCAL_CLOUD=1, which the local
    cloud sets). Raises ValueError naming the scheme and host otherwise, before any connection is tried."""
    parts = urlsplit(url)
    if parts.scheme == "amqps":
        return url
    if parts.scheme != "amqp":
        raise ValueError(f"broker URL scheme {parts.scheme or '(none)'!r} is not amqps:// (or amqp:// to this machine)")
    if local is None:
        local = os.environ.get("RINGFLEET_LOCAL_CLOUD") == "1"
    if not (local or _is_loopback(parts.hostname)):
        raise ValueError(
            f"plain amqp:// to {parts.hostname} refused: the broker's credentials and commands would cross the "
            "network unencrypted; use amqps:// (Amazon MQ's endpoint, port 5671). amqp:// is for a broker on "
            "this machine or the local cloud only"
        )
    return url


def broker_url(endpoint: str, username: str, password: str, vhost: str | None = None) -> str:
    """``amqps://user:pass@host:port/vhost`` from the endpoint (which carries no credentials) and a secret; plain
    ``amqp://`` only as ``require_tls`` allows it."""
    parts = urlsplit(endpoint)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"
    if parts.port:
        netloc += f":{parts.port}"
    path = "/" + quote(vhost, safe="") if vhost is not None else parts.path
    return require_tls(urlunsplit((parts.scheme, netloc, path, "", "")))


def url_user(url: str) -> str | None:
    """The user an AMQP URL logs in as (None: the URL names none)."""
    user = urlsplit(url).username
    return unquote(user) if user else None
