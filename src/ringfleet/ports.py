"""Ports: the interfaces the handlers' core talks to; boto3 / aio-pika implementations live in ringfleet.adapters.

Stable signatures (other handlers build on them; change them only together):

- ``JobRepository`` — the jobs table. ``create`` is put-if-absent (a redelivered JobSubmitted returns False and
  changes nothing). ``save(job, decided_from=old)`` writes ``job`` only if the stored item is still at
  ``old.generation`` and ``old.revision`` — the generation fence: a decision made from a stale read returns False
  and must be dropped (re-read and re-decide, or ignore). The durable checkpoint is written only through
  ``record_durable_checkpoint`` (a newer step wins), never by ``save``, so the two never overwrite each other.
- ``NodeRepository`` — the nodes table (instance -> job, rank, state, last heartbeat). Placing an instance on a
  job is ``put(Node(instance_id, job_id, state=NodeState.PLACED, host=...))``.
- ``CommandPublisher`` — commands to a job's workers over the broker.
- ``FleetGateway`` — the Auto Scaling lifecycle hook (heartbeat while a checkpoint runs, complete with CONTINUE), and
  which instances EC2 no longer runs (a worker's failed collective names no culprit: the fleet does).
- ``CheckpointStore`` / ``CheckpointCatalog`` — checkpoint objects in S3 and the checkpoints table.
- ``Clock`` — now, injectable in tests.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointManifest, CheckpointNow, Reconfigure, Stop
    from ringfleet.domain.jobs import DurableCheckpoint, Job
    from ringfleet.domain.nodes import LifecycleHook, Node
    from ringfleet.domain.scaling import FleetState, Pool

__all__ = [
    "CheckpointCatalog",
    "CheckpointRecord",
    "CheckpointStatus",
    "CheckpointStore",
    "Clock",
    "CommandPublisher",
    "FleetGateway",
    "FleetInstance",
    "FleetSnapshot",
    "JobRepository",
    "NodeRepository",
    "PriceSource",
    "Saved",
    "ScalingStateStore",
    "ShardDigest",
    "SpotFleetGateway",
]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


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
        """Stores a node as given (placing an instance on a job, or a recovery's decided change)."""
        ...

    def get(self, instance_id: str) -> Node | None: ...

    def list_by_job(self, job_id: str) -> list[Node]:
        """Every node ever placed on the job, lost ones included."""
        ...

    def record_heartbeat(self, instance_id: str, *, generation: int, step: int, at: datetime) -> bool:
        """Records liveness of an ACTIVE node at ``generation`` or newer; False for an unknown, lost or
        older-generation node (a late heartbeat never revives a node recovery gave up on)."""
        ...

    def list_silent(self, before: datetime) -> list[Node]:
        """ACTIVE nodes whose last heartbeat (or placement) is older than ``before``; reads grow with the silent
        nodes, not with the table."""
        ...


class CommandPublisher(Protocol):
    def publish(self, commands: Sequence[CheckpointNow | Reconfigure | Stop]) -> None:
        """Publishes commands to their jobs' workers, confirmed by the broker, in order; raises when it cannot."""
        ...


class FleetGateway(Protocol):
    def heartbeat_lifecycle_action(self, hook: LifecycleHook) -> None:
        """Extends the hook's timeout while the emergency checkpoint runs."""
        ...

    def complete_lifecycle_action(self, hook: LifecycleHook, result: str = "CONTINUE") -> None:
        """Lets Auto Scaling terminate the instance."""
        ...

    def not_running(self, instance_ids: Collection[str]) -> set[str]:
        """Those of ``instance_ids`` that EC2 does not report running (stopping, shutting down, gone, unknown)."""
        ...


@dataclass(frozen=True)
class ShardDigest:
    size: int
    sha256: str


class CheckpointStore(Protocol):
    def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """An object's body; raises ValueError when it is larger than ``max_bytes``."""
        ...

    def digest(self, bucket: str, key: str) -> ShardDigest | None:
        """Size and sha256 of an object as stored, or None when it does not exist."""
        ...

    def copy_checkpoint(self, manifest: CheckpointManifest, source_bucket: str, target_bucket: str) -> None:
        """Server-side copy of every shard, then the manifest (last, so a copy exists only once complete)."""
        ...

    def delete_checkpoint(self, bucket: str, job_id: str, step: int) -> None:
        """Deletes the manifest first (so the checkpoint stops existing), then its shards."""
        ...


class CheckpointStatus(StrEnum):
    DURABLE = "DURABLE"
    QUARANTINED = "QUARANTINED"
    RETIRED = "RETIRED"


@dataclass(frozen=True)
class CheckpointRecord:
    job_id: str
    step: int
    generation: int
    status: CheckpointStatus
    #: Where it is kept: the backup copy for DURABLE ones, the original for QUARANTINED ones.
    uri: str
    size_bytes: int
    recorded_at: datetime
    reason: str = ""


class CheckpointCatalog(Protocol):
    def put(self, record: CheckpointRecord) -> None: ...

    def list(self, job_id: str) -> list[CheckpointRecord]:
        """A job's checkpoints, oldest step first."""
        ...


# -- fleet scaling (issue 5) ------------------------------------------------------------------------------------------
# FleetGateway above is the Auto Scaling lifecycle hook; capacity itself is SpotFleetGateway's.


@dataclass(frozen=True)
class FleetInstance:
    """A running (or launching) instance of the stack's fleets."""

    instance_id: str
    instance_type: str
    #: ``spot:g5.xlarge:us-east-1a`` (see ringfleet.domain.scaling.pool_key).
    pool: str
    state: str
    host: str | None = None


@dataclass(frozen=True)
class FleetSnapshot:
    """The stack's fleets as EC2 reports them: target and launched capacity per pool, and the instances."""

    targets: dict[str, int]
    fulfilled: dict[str, int]
    instances: tuple[FleetInstance, ...]


class SpotFleetGateway(Protocol):
    def snapshot(self) -> FleetSnapshot: ...

    def set_targets(self, targets: dict[str, int], *, release: Sequence[str] = ()) -> None:
        """Sets each pool's target capacity (EC2 Fleet ``maintain``); ``release`` names idle instances to terminate
        when a pool shrinks, so that a shrinking fleet never takes a busy worker."""
        ...


class PriceSource(Protocol):
    def pools(self, instance_types: set[str]) -> list[Pool]:
        """Spot and on-demand pools offering these instance types, with prices and interruption rates."""
        ...


class ScalingStateStore(Protocol):
    def load(self) -> tuple[FleetState, int]:
        """The scaler's remembered state and its revision (0 when none was saved)."""
        ...

    def save(self, state: FleetState, *, revision: int, report: dict[str, object]) -> bool:
        """Stores the state at ``revision + 1`` if still at ``revision``; False when another scaler run won."""
        ...
