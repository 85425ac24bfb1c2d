"""Names on the broker (RabbitMQ locally, Amazon MQ in AWS): part of the wire contract."""

from __future__ import annotations

__all__ = [
    "COMMANDS_EXCHANGE",
    "DEAD_LETTER_EXCHANGE",
    "JOBS_QUEUE",
    "MQ_QUEUES",
    "WORKER_EVENTS_QUEUE",
    "command_routing_key",
    "dead_letter_queue",
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
