"""Names on the broker (RabbitMQ locally, Amazon MQ in AWS): part of the wire contract."""

from __future__ import annotations

__all__ = [
    "COMMANDS_EXCHANGE",
    "DEAD_LETTER_EXCHANGE",
    "INSTANCE_QUEUE_ARGUMENTS",
    "JOBS_QUEUE",
    "MQ_QUEUES",
    "WORKER_EVENTS_QUEUE",
    "command_routing_key",
    "dead_letter_queue",
    "instance_queue",
    "instance_routing_keys",
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
