"""In-memory implementations of the ports, for tests and the hypothesis model: same contracts, no I/O."""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ringfleet.backup.ports import CheckpointRecord
from ringfleet.core.jobs import ACTIVE_STATES, DurableCheckpoint, Job
from ringfleet.core.nodes import LifecycleHook, Node, NodeState
from ringfleet.core.ports import Saved
from ringfleet.intake.ports import Admission
from ringfleet.intake.quotas import Usage

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointNow, Reconfigure, Stop
    from ringfleet.core.ports import Clock
    from ringfleet.intake.quotas import QuotaClaim

__all__ = [
    "InMemoryCheckpointCatalog",
    "InMemoryInstanceLifecycle",
    "InMemoryJobRepository",
    "InMemoryNodeRepository",
    "ManualClock",
    "RecordingCommandPublisher",
]


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


class InMemoryJobRepository:
    def __init__(self, clock: Clock) -> None:
        self._jobs: dict[str, Job] = {}
        self._clock = clock
        self._lock = threading.Lock()
        #: The share of its tenant's quota each job admitted within quota holds while it is active.
        self._held: dict[str, Usage] = {}

    def usage(self, tenant: str) -> Usage:
        """What ``tenant``'s active jobs hold of its quota (a job's share is given back when it ends)."""
        jobs = [self._jobs[j] for j in self._held]
        held = [self._held[j.job_id] for j in jobs if j.tenant == tenant and j.state in ACTIVE_STATES]
        return Usage(sum(u.gpus for u in held), sum(u.usd_per_hour for u in held))

    def create_within_quota(self, job: Job, claim: QuotaClaim) -> Admission:
        with self._lock:
            if job.job_id in self._jobs:
                return Admission("exists")
            usage = self.usage(claim.tenant)
            if usage.gpus > claim.gpus_room or usage.usd_per_hour > claim.usd_room:
                return Admission("over-quota", usage)
            self._jobs[job.job_id] = job.saved(self._clock.now()) if job.revision == 0 else job
            self._held[job.job_id] = claim.wants
            return Admission("admitted")

    def create(self, job: Job) -> bool:
        with self._lock:
            if job.job_id in self._jobs:
                return False
            self._jobs[job.job_id] = job.saved(self._clock.now()) if job.revision == 0 else job
            return True

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def save(self, job: Job, *, decided_from: Job, nodes: Sequence[Node] = ()) -> Saved:
        """Nodes are left to the caller (``nodes_written`` False): this repository knows no nodes."""
        with self._lock:
            stored = self._jobs.get(job.job_id)
            expected = (decided_from.generation, decided_from.revision)
            if stored is None or (stored.generation, stored.revision) != expected:
                return Saved(False, current=stored)
            stamped = job.saved(self._clock.now()) if job.revision == decided_from.revision else job
            self._jobs[job.job_id] = replace(stamped, durable_checkpoint=stored.durable_checkpoint)
            return Saved(True)

    def record_durable_checkpoint(self, job_id: str, checkpoint: DurableCheckpoint) -> bool:
        with self._lock:
            stored = self._jobs.get(job_id)
            if stored is None or (stored.durable_checkpoint and stored.durable_checkpoint.step >= checkpoint.step):
                return False
            self._jobs[job_id] = replace(stored, durable_checkpoint=checkpoint)
            return True

    def list_by_tenant(self, tenant: str) -> list[Job]:
        return [j for j in self._jobs.values() if j.tenant == tenant]

    def list_active(self) -> list[Job]:
        return [j for j in self._jobs.values() if j.state in ACTIVE_STATES]


#: Makes ``InMemoryNodeRepository.place``'s check-and-write one step, as DynamoDB's conditional put is.
_PLACING = threading.Lock()


class InMemoryNodeRepository:
    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}

    def put(self, node: Node) -> None:
        self._nodes[node.instance_id] = node

    def place(self, node: Node, *, over: Node | None) -> bool:
        with _PLACING:
            stored = self._nodes.get(node.instance_id)
            if stored is not None and over is not None:
                same = (stored.job_id, stored.state, stored.generation) == (over.job_id, over.state, over.generation)
                if not same or (over.updated_at is not None and stored.updated_at != over.updated_at):
                    return False
            elif stored is not None or over is not None:
                return False
            self._nodes[node.instance_id] = node
            return True

    def get(self, instance_id: str) -> Node | None:
        return self._nodes.get(instance_id)

    def list_by_job(self, job_id: str) -> list[Node]:
        return sorted((n for n in self._nodes.values() if n.job_id == job_id), key=lambda n: n.instance_id)

    def record_heartbeat(self, instance_id: str, *, job_id: str, generation: int, step: int, at: datetime) -> bool:
        node = self._nodes.get(instance_id)
        if (
            node is None
            or node.job_id != job_id
            or node.state not in (NodeState.ACTIVE, NodeState.LEAVING)
            or node.generation > generation
        ):
            return False
        if node.last_heartbeat is not None and node.last_heartbeat >= at:
            return False
        self._nodes[instance_id] = replace(node, last_heartbeat=at, last_step=step)
        return True

    def list_silent(self, before: datetime) -> list[Node]:
        return [
            n
            for n in self._nodes.values()
            if n.state is NodeState.ACTIVE and ((n.last_heartbeat or n.updated_at or before) < before)
        ]


class RecordingCommandPublisher:
    """Keeps what would have been published, in order."""

    def __init__(self) -> None:
        self.published: list[CheckpointNow | Reconfigure | Stop] = []

    def publish(self, commands: Sequence[CheckpointNow | Reconfigure | Stop]) -> None:
        self.published.extend(commands)


class InMemoryInstanceLifecycle:
    def __init__(self) -> None:
        self.heartbeats: list[LifecycleHook] = []
        self.completed: list[tuple[LifecycleHook, str]] = []
        #: Instances the fleet reports not running.
        self.stopped: set[str] = set()

    def not_running(self, instance_ids: Collection[str]) -> set[str]:
        return set(instance_ids) & self.stopped

    def heartbeat_lifecycle_action(self, hook: LifecycleHook) -> None:
        self.heartbeats.append(hook)

    def complete_lifecycle_action(self, hook: LifecycleHook, result: str = "CONTINUE") -> None:
        self.completed.append((hook, result))


class InMemoryCheckpointCatalog:
    def __init__(self) -> None:
        self._records: dict[tuple[str, int], CheckpointRecord] = {}

    def put(self, record: CheckpointRecord) -> None:
        self._records[(record.job_id, record.step)] = record

    def list(self, job_id: str) -> list[CheckpointRecord]:
        return sorted((r for (j, _), r in self._records.items() if j == job_id), key=lambda r: r.step)
