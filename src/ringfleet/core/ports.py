"""The ports every use case shares: the jobs and nodes tables, the broker's command side, the clock.

Stable signatures (the use cases build on them; change them only together):

- ``JobRepository`` — the jobs table. ``create`` is put-if-absent (a redelivered JobSubmitted returns False and
  changes nothing). ``save(job, decided_from=old)`` writes ``job`` only if the stored item is still at
  ``old.generation`` and ``old.revision`` — the generation fence: a decision made from a stale read returns False
  and must be dropped (re-read and re-decide, or ignore). The durable checkpoint is written only through
  ``record_durable_checkpoint`` (a newer step wins), never by ``save``, so the two never overwrite each other.
- ``NodeRepository`` — the nodes table (instance -> job, rank, state, last heartbeat). Placing an instance on a
  job is ``place(Node(instance_id, job_id, state=NodeState.PLACED, host=...), over=<the row as read>)``: written
  only if the instance's row is still as the placement read it, so that two scaler runs never place one instance
  in two jobs.
- ``CommandPublisher`` — commands to a job's workers over the broker.
- ``Clock`` — now, injectable in tests; ``SystemClock`` is the real one.

Each capability's own ports live beside its use case (``ringfleet.recovery.ports``, ``ringfleet.scaling.ports``,
``ringfleet.backup.ports``); their implementations on boto3 / aio-pika live in ``ringfleet.adapters``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointNow, Reconfigure, Stop
    from ringfleet.core.jobs import DurableCheckpoint, Job
    from ringfleet.core.nodes import Node

__all__ = ["Clock", "CommandPublisher", "JobRepository", "NodeRepository", "Saved", "SystemClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class SystemClock:
    """``Clock`` on the machine's clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass(frozen=True)
class Saved:
    """What a conditional save did: truthy when it was written.

    When another writer got there first, ``current`` is the job as that writer left it, returned by the failed
    write itself (DynamoDB's ``ReturnValuesOnConditionCheckFailure``): the caller decides again from it without a
    second round trip. ``nodes_written`` says whether the nodes passed along were written in the same transaction
    (a repository that cannot leaves them to the caller).
    """

    saved: bool
    current: Job | None = None
    nodes_written: bool = False

    def __bool__(self) -> bool:
        return self.saved


class JobRepository(Protocol):
    def create(self, job: Job) -> bool:
        """Stores a new job if no job with its id exists; True when stored, False when one already was."""
        ...

    def get(self, job_id: str) -> Job | None:
        """The job as stored (strongly consistent read), or None."""
        ...

    def save(self, job: Job, *, decided_from: Job, nodes: Sequence[Node] = ()) -> Saved:
        """Writes ``job`` (at ``decided_from.revision + 1``) if the stored job is still ``decided_from``'s generation
        and revision; falsy when another writer got there first (the decision is stale and must be dropped), with
        the stored job when the write returned it. ``nodes``: the nodes the decision changes, written in the same
        transaction where the repository can (``Saved.nodes_written``)."""
        ...

    def record_durable_checkpoint(self, job_id: str, checkpoint: DurableCheckpoint) -> bool:
        """Sets the job's newest durable checkpoint if it has none or an older step; False otherwise (or no job)."""
        ...

    def list_by_tenant(self, tenant: str) -> list[Job]:
        """Every job of a tenant, in no particular order."""
        ...

    def list_active(self) -> list[Job]:
        """Every job not in a final state (PENDING, PROVISIONING, RUNNING, RECOVERING); reads grow with the active
        jobs, not with the jobs ever run."""
        ...


class NodeRepository(Protocol):
    def put(self, node: Node) -> None:
        """Stores a node as given (a recovery's decided change, or the nodes of a job its start just claimed)."""
        ...

    def place(self, node: Node, *, over: Node | None) -> bool:
        """Stores ``node`` only if the instance's stored row is still ``over`` (same job, state, generation and, when
        ``over`` has one, update time), or absent when ``over`` is None; False when another writer changed it since
        it was read (another scaler run placed the instance first): the placement must be dropped."""
        ...

    def get(self, instance_id: str) -> Node | None: ...

    def list_by_job(self, job_id: str) -> list[Node]:
        """Every node ever placed on the job, lost ones included."""
        ...

    def record_heartbeat(self, instance_id: str, *, job_id: str, generation: int, step: int, at: datetime) -> bool:
        """Records liveness of an ACTIVE node of ``job_id`` at ``generation`` or newer; False for an unknown, lost,
        older-generation or other job's node (a late heartbeat never revives a node recovery gave up on, and a
        worker of one job cannot keep another job's node alive by naming it)."""
        ...

    def list_silent(self, before: datetime) -> list[Node]:
        """ACTIVE nodes whose last heartbeat (or placement) is older than ``before``; reads grow with the silent
        nodes, not with the table."""
        ...


class CommandPublisher(Protocol):
    def publish(self, commands: Sequence[CheckpointNow | Reconfigure | Stop]) -> None:
        """Publishes commands to their jobs' workers, confirmed by the broker, in order; raises when it cannot."""
        ...
