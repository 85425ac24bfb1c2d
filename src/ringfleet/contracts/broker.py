"""Names on the broker (RabbitMQ locally, Amazon MQ in AWS): part of the wire contract."""

from __future__ import annotations

__all__ = [
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
    "command_routing_key",
    "dead_letter_queue",
    "instance_queue",
    "instance_routing_keys",
    "tenant_of_user",
]

#: App messages (JobSubmitted, JobCancelled); consumed by the job_intake function.
JOBS_QUEUE = "ringfleet.jobs"
#: Worker messages (Heartbeat, CheckpointCompleted, WorkerFailed); consumed by worker_events.
WORKER_EVENTS_QUEUE = "ringfleet.worker-events"
#: The queues Lambda consumes through MQ event sources, in the order template.yaml lists them.
MQ_QUEUES = (JOBS_QUEUE, WORKER_EVENTS_QUEUE)
#: Commands to workers (CheckpointNow, Reconfigure, Stop): a topic exchange.
COMMANDS_EXCHANGE = "ringfleet.commands"
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
