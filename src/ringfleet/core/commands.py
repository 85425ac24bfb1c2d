"""The commands the control plane sends a job's workers, each built in one place whoever decides to send it.

A Reconfigure is sent by recovery (a re-formed, grown or restarted ring) and by the scaler's placement (a job's first
ring): both build it here, so its rendezvous port, slots, program and message id mean the same whichever sent it. A Stop
is sent by recovery (a failed job) and by intake (a cancelled one).

Message ids are derived from what the command is (job, generation, kind): the same decision made twice, by a retried
event or by two writers racing, publishes the same id, which the workers and the broker drop as a duplicate.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import NAMESPACE_URL, UUID, uuid5

if TYPE_CHECKING:
    from ringfleet.contracts import Reconfigure, Stop
    from ringfleet.core.jobs import DurableCheckpoint, Job
    from ringfleet.core.nodes import Node

__all__ = [
    "DEFAULT_RENDEZVOUS_HOST",
    "RENDEZVOUS_BASE_PORT",
    "RENDEZVOUS_PORTS",
    "command_message_id",
    "reconfigure_command",
    "rendezvous_port",
    "stop_command",
]

#: Rank 0 serves the ring's rendezvous (a torch.distributed TCP store) on a port of RENDEZVOUS_BASE_PORT ..
#: + RENDEZVOUS_PORTS - 1 (below Linux's ephemeral ports, 32768 on), see rendezvous_port.
RENDEZVOUS_BASE_PORT = 29500
RENDEZVOUS_PORTS = 3000
#: Used when the rank-0 node has no recorded host (the local cloud runs every worker on this machine).
DEFAULT_RENDEZVOUS_HOST = "127.0.0.1"


def command_message_id(job_id: str, generation: int, kind: str) -> UUID:
    """A command's message id, derived from what it is: the same decision made twice publishes the same id."""
    return uuid5(NAMESPACE_URL, f"ringfleet:{job_id}:{generation}:{kind}")


def rendezvous_port(job: Job) -> int:
    """The port of ``job``'s rendezvous at its current generation.

    Derived from the job (its tenant, id and the submission it was admitted from) and the generation, so that two
    rings on one host rarely share a port (two jobs on the local fleet, two local clouds on one machine: a fixed base
    plus the generation gave every job's first ring the same port), and a job's next generation never takes the port
    of the one still closing. Where two rings meet anyway, a worker refuses a store that names another ring
    (``training_worker.membership``), and a rank 0 that cannot bind fails its generation: the control plane's next
    one moves to the next port.
    """
    ring = f"{job.tenant}/{job.job_id}/{job.spec.message_id}".encode()
    return RENDEZVOUS_BASE_PORT + (zlib.crc32(ring) + job.generation) % RENDEZVOUS_PORTS


def reconfigure_command(
    job: Job, nodes: Iterable[Node], at: datetime, *, checkpoint: DurableCheckpoint | None
) -> Reconfigure:
    """The Reconfigure that forms ``job``'s ring as it now is (its generation and members, already decided).

    ``nodes``: the job's instances as the caller knows them (a later one of the same instance wins): where each
    worker listens (rank 0's host is the rendezvous) and its instance's slots, of which each member runs
    ``spec.slots_on`` (a member with no node: one). Only members running more than one are named, so a ring of
    one-GPU instances gets the Reconfigure it always got. ``checkpoint``: what the ring restores (None: its members
    keep what they hold in memory, or a new job starts from nothing).
    """
    from ringfleet.contracts import Program, Reconfigure

    known = {n.instance_id: n for n in nodes}
    placed = [known[i] for i in job.members if i in known]
    hosts = {n.instance_id: n.host for n in placed if n.host}
    slots = {n.instance_id: s for n in placed if (s := job.spec.slots_on(n.slots)) > 1}
    rank0 = next(i for i, r in job.members.items() if r == 0)
    port = rendezvous_port(job)
    return Reconfigure(
        job_id=job.job_id,
        generation=job.generation,
        world_size=len(job.members),
        ranks=dict(job.members),
        rendezvous=f"{hosts.get(rank0) or DEFAULT_RENDEZVOUS_HOST}:{port}",
        # The members' addresses: a worker accepts a rendezvous only on one of them (training_worker.membership).
        hosts=hosts,
        slots=slots,
        checkpoint=checkpoint.ref() if checkpoint else None,
        # Every Reconfigure says what the job runs: an instance booted unplaced learns it from its first one.
        program=Program.of(job.spec),
        message_id=command_message_id(job.job_id, job.generation, "Reconfigure"),
        sent_at=at,
    )


def stop_command(job: Job, reason: str, at: datetime) -> Stop:
    """The Stop that ends ``job``'s workers at its current generation."""
    from ringfleet.contracts import Stop

    return Stop(
        job_id=job.job_id,
        generation=job.generation,
        reason=reason,
        message_id=command_message_id(job.job_id, job.generation, "Stop"),
        sent_at=at,
    )
