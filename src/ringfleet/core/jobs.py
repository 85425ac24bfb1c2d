"""The job record and its state machine: states, generations, members, the recovery in progress and the incident log."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointRef, JobSubmitted

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "RUN_STARTS",
    "TRANSITIONS",
    "DurableCheckpoint",
    "IllegalTransition",
    "Incident",
    "Job",
    "JobState",
    "PendingRecovery",
    "Retirement",
]

#: Incidents kept on a job record; older ones are dropped (a DynamoDB item holds at most 400 KB).
MAX_INCIDENTS = 50


class JobState(StrEnum):
    PENDING = "PENDING"
    PROVISIONING = "PROVISIONING"
    RUNNING = "RUNNING"
    RECOVERING = "RECOVERING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset(JobState) - FINAL_STATES

#: Which state may follow which. A job in a final state never moves again.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.PROVISIONING, JobState.CANCELLED, JobState.FAILED}),
    JobState.PROVISIONING: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.RECOVERING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.RECOVERING: frozenset({JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    """A state change the state machine does not allow (say CANCELLED -> RUNNING)."""


@dataclass(frozen=True)
class DurableCheckpoint:
    """A checkpoint verified and copied to the backup bucket: what a restart loads."""

    #: ``s3://<backup bucket>/jobs/<job>/ckpt/<step:012d>/``
    uri: str
    step: int
    generation: int

    def ref(self) -> CheckpointRef:
        from ringfleet.contracts import CheckpointRef

        return CheckpointRef(uri=self.uri, step=self.step)


@dataclass(frozen=True)
class Incident:
    """One entry of a job's incident log: what happened to which instance, and at which generation."""

    at: datetime
    #: spot-interruption, rebalance, lifecycle-terminate, instance-stopped, heartbeat-lost, worker-failed,
    #: reconfigured, restarted, ...
    cause: str
    generation: int
    instance_id: str | None = None
    detail: str = ""
    #: The step it concerns, when it concerns one: an emergency checkpoint's; the step a start or a restart from a
    #: durable checkpoint trains on from (``RUN_STARTS``).
    step: int | None = None


#: The incidents after which the job trains from their ``step`` (a start, a restore from a durable checkpoint):
#: its pace counts from the newest of them.
RUN_STARTS = frozenset({"started", "restarted"})


@dataclass(frozen=True)
class PendingRecovery:
    """A recovery in progress: what was lost or is leaving, and what it waits for before the next Reconfigure."""

    cause: str
    started_at: datetime
    #: Instances leaving the ring with notice given: still alive until they go.
    leaving: tuple[str, ...]
    #: Instances gone without notice (or gone before a replacement took their place): the ring is broken.
    lost: tuple[str, ...] = ()
    #: Notice given: a CheckpointNow went out and the recovery waits for its CheckpointCompleted.
    awaiting_checkpoint: bool = False
    #: The step of the emergency checkpoint once it completed.
    checkpoint_step: int | None = None
    #: When the first leaving instance goes away (from the notice), if known.
    deadline: datetime | None = None
    #: Step the workers reported last before the loss, for the "steps lost" metric.
    last_step: int | None = None


@dataclass(frozen=True)
class Retirement:
    """Members being replaced one at a time through the elastic ring: a rolling upgrade, or on-demand workers moving
    back to spot.

    The job asks for one instance beyond its members (``Job.instances_wanted``); the first to arrive joins the ring
    as a grow (the ``replacement``); once that ring has written a checkpoint, one retiring member is left out (the
    leave-out shrink a spot notice uses) and its instance released; then the next. The ring never stops and never
    falls below what it had.
    """

    #: ``upgrade`` (replacements run ``image``/``entrypoint``) or ``move-back`` (replacements land on spot).
    kind: str
    started_at: datetime
    #: Members still to replace, in the order they leave.
    retiring: tuple[str, ...]
    #: The instance that joined to replace the next retiring member; None while it is wanted.
    replacement: str | None = None
    #: The generation the replacement joined at: its first checkpoint there proves it runs.
    joined_generation: int | None = None
    #: Members replaced so far.
    replaced: int = 0
    #: The program the job ran before an upgrade (image, entrypoint): what a rollback restores.
    previous_image: str | None = None
    previous_entrypoint: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """A training job as the control plane stores it (one item of the jobs table).

    ``generation`` grows by one at each membership change; ``revision`` grows by one at every save and, with
    the generation, is what a conditional save checks so that a decision made from a stale read is dropped.
    """

    job_id: str
    tenant: str
    state: JobState
    #: The JobSubmitted the job was admitted from (its min/max workers, instance types, image, ...).
    spec: JobSubmitted
    generation: int = 0
    #: instance id -> rank of the current generation's ring.
    members: Mapping[str, int] = field(default_factory=dict)
    #: Instances placed for this job that are running but not yet in the ring (replacements, scale-up).
    spares: tuple[str, ...] = ()
    #: How many more instances the job wants than members + spares: the fleet scaler reads it as demand.
    replacements_wanted: int = 0
    durable_checkpoint: DurableCheckpoint | None = None
    #: A step whose checkpoint a restart is loading: retention never deletes it.
    restoring_step: int | None = None
    recovery: PendingRecovery | None = None
    #: Members being replaced one at a time (rolling upgrade, move back to spot); None: none.
    retirement: Retirement | None = None
    incidents: tuple[Incident, ...] = ()
    #: How many times the job's own script failed (WorkerFailed scope ``script``), at most once per generation;
    #: the job ends FAILED once this exceeds ``spec.max_restarts``. Lost nodes and membership changes never count.
    script_failures: int = 0
    #: The generation whose script failure was counted last: further reports of it (other ranks, redeliveries)
    #: count nothing more.
    script_failed_generation: int | None = None
    #: Why the job ended FAILED (its script's last failure, traceback tail included, or why it was refused).
    failure: str | None = None
    #: Commands decided but not yet confirmed as published (the outbox): published after the save that decided
    #: them, cleared by the next save, re-published by whoever finds them still here.
    outbox: tuple[Mapping[str, Any], ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    revision: int = 0

    # -- reading ----------------------------------------------------------------------------------------------------

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def world_size(self) -> int:
        return len(self.members)

    @property
    def instances_wanted(self) -> int:
        """More instances the job takes: its recovery's replacements, or room up to max_workers (a ring that
        re-formed smaller after a loss grows back), one more while a retiring member waits for its replacement."""
        return max(self.replacements_wanted, self.worker_room - len(self.spares))

    @property
    def worker_room(self) -> int:
        """How many more members the ring may take now: up to max_workers, one beyond while a retirement (not
        paused by a recovery) waits for its replacement."""
        retirement = self.retirement
        extra = int(
            retirement is not None
            and retirement.replacement is None
            and bool(retirement.retiring)
            and self.recovery is None
        )
        return self.max_workers + extra - len(self.members)

    @property
    def min_workers(self) -> int:
        return self.spec.min_workers

    @property
    def max_workers(self) -> int:
        return self.spec.max_workers

    def rank_of(self, instance_id: str) -> int | None:
        return self.members.get(instance_id)

    # -- changing (each returns a new Job; nothing is stored until a repository saves it) ---------------------------

    def moved_to(self, state: JobState) -> Job:
        """This job in ``state``; raises IllegalTransition when the state machine forbids it."""
        if state == self.state:
            return self
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"job {self.job_id}: {self.state} -> {state} is not allowed")
        return replace(self, state=state)

    def with_incident(self, incident: Incident) -> Job:
        return replace(self, incidents=(*self.incidents, incident)[-MAX_INCIDENTS:])

    def reconfigured(self, members: Mapping[str, int], *, spares: tuple[str, ...] = ()) -> Job:
        """The next generation with these members (ranks 0..n-1), RUNNING, no recovery pending."""
        if sorted(members.values()) != list(range(len(members))):
            raise ValueError(f"job {self.job_id}: ranks {sorted(members.values())} are not 0..{len(members) - 1}")
        state = self.moved_to(JobState.RUNNING).state
        return replace(
            self,
            state=state,
            generation=self.generation + 1,
            members=dict(members),
            spares=spares,
            recovery=None,
            replacements_wanted=0,
        )

    def saved(self, now: datetime) -> Job:
        """The job as a save writes it: the next revision, stamped."""
        return replace(self, revision=self.revision + 1, updated_at=now, created_at=self.created_at or now)
