"""Messages on the broker: app messages to job_intake, worker messages to worker_events, commands to workers."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)

from ringfleet.contracts.checkpoints import checkpoint_prefix, parse_checkpoint_uri
from ringfleet.contracts.scalars import (
    FiniteFloat,
    Generation,
    InstanceId,
    InstanceType,
    JobId,
    MetadataKey,
    MetadataValue,
    Rank,
    Reason,
    Sha256,
    SizeBytes,
    Step,
    TenantId,
    WorldSize,
)

__all__ = [
    "CONTAINER_INSTANCE_LABEL",
    "CONTAINER_ROLE_LABEL",
    "DEFAULT_CHECKPOINT_INTERVAL_STEPS",
    "MESSAGE_TYPES",
    "AppMessage",
    "CheckpointCompleted",
    "CheckpointNow",
    "CheckpointRef",
    "Command",
    "Heartbeat",
    "InstanceIdle",
    "JobCancelled",
    "JobSubmitted",
    "Message",
    "MessageBase",
    "Program",
    "Reconfigure",
    "Stop",
    "UpgradeJob",
    "WorkerFailed",
    "WorkerMessage",
    "encode_message",
    "parse_message",
    "split_host_port",
]

WorkerCount = Annotated[int, Field(strict=True, ge=1, le=1024)]
#: Steps between a job's regular S3 checkpoints where nothing says otherwise: the one default of
#: ``checkpoint_interval_steps``, on the wire (Program) and in the worker's runtime.
DEFAULT_CHECKPOINT_INTERVAL_STEPS = 50
CheckpointIntervalSteps = Annotated[int, Field(strict=True, ge=1, le=10**9)]
#: Largest JobSubmitted accepted (its JSON): well inside a DynamoDB item beside the job's own state.
MAX_SPEC_BYTES = 64 * 1024
GpuCount = Annotated[int, Field(strict=True, ge=0, le=16)]
#: Training processes one instance runs for a job: one per GPU (a slot), at most the largest instance's GPUs.
SlotCount = Annotated[int, Field(strict=True, ge=1, le=16)]
_Text = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=256)]
_Arg = Annotated[str, StringConstraints(strict=True, max_length=4096)]
#: A container image reference: ``[registry/]repository[:tag][@sha256:digest]``; no spaces or shell characters.
_Image = Annotated[str, StringConstraints(strict=True, pattern=r"^[a-z0-9][A-Za-z0-9._/:@-]{0,511}$")]
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: A DNS name or an IPv4 address (a dotted quad is a valid host name too).
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def _now() -> datetime:
    return datetime.now(UTC)


def split_host_port(address: str) -> tuple[str, int]:
    """``("host", port)`` of ``host:port`` (a DNS name, an IPv4 address or a bracketed IPv6 address)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{address!r} is not host:port")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} of {address!r} is not in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ValueError(f"host {host!r} of {address!r} is not an IPv6 address") from exc
        host = host[1:-1]
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"host {host!r} of {address!r} is not a host name or IPv4 address")
    return host, int(port_text)


class MessageBase(BaseModel):
    """What every message carries: its type (the discriminator), schema version, a unique id and when it was sent."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    type: str
    schema_version: Literal[1] = 1
    #: Unique per message; consumers use it to drop a redelivered duplicate.
    message_id: UUID = Field(default_factory=uuid4)
    sent_at: AwareDatetime = Field(default_factory=_now)


# -- app messages (apps -> job_intake) ---------------------------------------------------------------------------


class JobSubmitted(MessageBase):
    """A tenant asks for a training job to run on min_workers..max_workers spot workers within a budget."""

    type: Literal["JobSubmitted"] = "JobSubmitted"
    tenant: TenantId
    job_id: JobId
    name: _Text
    image: _Image
    entrypoint: list[_Arg] = Field(min_length=1, max_length=256)
    min_workers: WorkerCount
    max_workers: WorkerCount
    gpus_per_worker: GpuCount
    #: The EC2 instance types the job may run on, in order of preference.
    instance_types: list[InstanceType] = Field(min_length=1, max_length=64)
    checkpoint_interval_steps: CheckpointIntervalSteps
    budget_usd_per_hour: Annotated[FiniteFloat, Field(gt=0, le=100_000)]
    hyperparameters: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=256)
    #: How many times the job's script may fail (raise, exit non-zero, never call ``init()``) before the job ends
    #: FAILED; like torchrun's ``--max-restarts``. Membership changes and lost nodes never count.
    max_restarts: Annotated[int, Field(strict=True, ge=0, le=100)] = 3
    #: Hours from submission by which the job should be done: the fleet scaler keeps it on spot while its slack
    #: allows and takes on-demand as the slack runs out. None: no deadline.
    deadline_hours: Annotated[FiniteFloat, Field(gt=0, le=24 * 365)] | None = None
    #: The step the job ends at, as its script counts them: what the fleet scaler estimates the work left from
    #: (with the steps reported so far) to meet ``deadline_hours``. None: unknown, the deadline cannot steer the job.
    total_steps: Annotated[int, Field(strict=True, ge=1, le=10**12)] | None = None
    #: Training processes per instance: one per GPU of the instance (a slot, torchrun's ``--nproc-per-node``), at
    #: most this many. None: every GPU of the instance trains. Instances of one job may have different GPU counts.
    slots_per_instance: SlotCount | None = None

    def slots_on(self, gpus: int) -> int:
        """The training processes this job runs on an instance of ``gpus`` GPUs: one per GPU, at most
        ``slots_per_instance``, at least one (an instance without GPUs still runs the job's one process)."""
        return max(1, min(gpus, self.slots_per_instance or gpus))

    @field_validator("instance_types")
    @classmethod
    def _instance_types_are_unique(cls, types: list[str]) -> list[str]:
        if len(set(types)) != len(types):
            raise ValueError("instance_types lists an instance type twice")
        return types

    @model_validator(mode="after")
    def _max_workers_at_least_min(self) -> JobSubmitted:
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) is less than min_workers ({self.min_workers})")
        return self

    @model_validator(mode="after")
    def _fits_its_record(self) -> JobSubmitted:
        # The spec is stored in the job's DynamoDB item (400 KB at most, with its incidents and members) and travels
        # in every Reconfigure: what does not fit is refused here, with the reason, not dead-lettered later.
        size = len(self.model_dump_json())
        if size > MAX_SPEC_BYTES:
            raise ValueError(
                f"the job spec is {size} bytes, more than {MAX_SPEC_BYTES}: keep the entrypoint and hyperparameters "
                "short (pass data and long settings by reference, e.g. an S3 URI)"
            )
        return self


class JobCancelled(MessageBase):
    """A tenant cancels a job; its workers are stopped and it ends CANCELLED."""

    type: Literal["JobCancelled"] = "JobCancelled"
    tenant: TenantId
    job_id: JobId
    reason: Reason


class UpgradeJob(MessageBase):
    """A tenant replaces a running job's workers one at a time with ones running a new image/entrypoint (a rolling
    upgrade through the elastic ring: the job never stops; the old workers keep their program)."""

    type: Literal["UpgradeJob"] = "UpgradeJob"
    tenant: TenantId
    job_id: JobId
    image: _Image
    #: None: the job's entrypoint as it is.
    entrypoint: list[_Arg] | None = Field(default=None, min_length=1, max_length=256)


# -- worker messages (workers -> worker_events) ------------------------------------------------------------------


class Heartbeat(MessageBase):
    """A worker is alive and training: sent every few seconds; its absence is how a silent failure is noticed."""

    type: Literal["Heartbeat"] = "Heartbeat"
    job_id: JobId
    instance_id: InstanceId
    generation: Generation
    rank: Rank
    world_size: WorldSize
    step: Step
    #: None until the first step has a loss.
    loss: FiniteFloat | None = None
    samples_per_second: Annotated[FiniteFloat, Field(ge=0, le=1e9)]
    #: Share of the time since the worker's previous heartbeat spent on new steps (not waiting for a ring, not
    #: restoring, not redoing steps a rollback lost); None when it could not tell (an older worker).
    goodput: Annotated[FiniteFloat, Field(ge=0, le=1)] | None = None

    @model_validator(mode="after")
    def _rank_within_world(self) -> Heartbeat:
        if self.rank >= self.world_size:
            raise ValueError(f"rank ({self.rank}) is not below world_size ({self.world_size})")
        return self


class CheckpointCompleted(MessageBase):
    """A checkpoint's manifest is in S3 (sent by rank 0); S3's own notification starts its backup."""

    type: Literal["CheckpointCompleted"] = "CheckpointCompleted"
    job_id: JobId
    instance_id: InstanceId
    generation: Generation
    step: Step
    #: ``s3://<bucket>/jobs/<job>/ckpt/<step:012d>/``, naming the same job and step as this message.
    uri: str
    manifest_sha256: Sha256
    size_bytes: SizeBytes
    #: Taken because notice was given (CheckpointNow), not on the job's regular interval.
    emergency: bool = False
    #: The job trained its last step: this checkpoint is its result, and the job is done.
    final: bool = False

    @model_validator(mode="after")
    def _uri_names_this_checkpoint(self) -> CheckpointCompleted:
        _check_checkpoint_uri(self.uri, self.job_id, self.step)
        return self


class WorkerFailed(MessageBase):
    """A worker hit an error it cannot recover from by itself (a failed collective, out of memory, a crash)."""

    type: Literal["WorkerFailed"] = "WorkerFailed"
    job_id: JobId
    instance_id: InstanceId
    generation: Generation
    rank: Rank
    step: Step
    reason: Reason
    #: ``self``: this worker cannot go on and is the lost node. ``ring``: a collective with its peers failed; the
    #: reporter is alive, rolled back to its last commit and waits for a Reconfigure: one of its peers is gone.
    #: ``script``: the job's own code failed (raised, exited non-zero, never called ``init()``, or its entrypoint is
    #: missing); ``reason`` ends with the last lines of its traceback. The instance is fine and waits for the next
    #: Reconfigure to run the script again; the job counts it against ``max_restarts``.
    scope: Literal["self", "ring", "script"] = "self"


class InstanceIdle(MessageBase):
    """An instance's agent runs no job: it booted (or was started again after its job ended) with no job's process
    left on the instance, and waits to be placed. Sent when its control channel is up and again every minute or so
    while it waits (a confirmation that arrives before its last job is seen to end is simply sent again).

    An instance whose job ended serves no other job until its agent says this (``NodeState.RELEASED``): the job's
    processes could otherwise still be training on it when it is placed again."""

    type: Literal["InstanceIdle"] = "InstanceIdle"
    instance_id: InstanceId


# -- commands (control plane -> workers, on the commands exchange) -----------------------------------------------


class CheckpointNow(MessageBase):
    """Checkpoint at the next step boundary, before ``deadline`` when one is given (notice of a lost node)."""

    type: Literal["CheckpointNow"] = "CheckpointNow"
    job_id: JobId
    generation: Generation
    reason: Literal["spot-interruption", "rebalance", "lifecycle-terminate", "requested"]
    deadline: AwareDatetime | None = None


class CheckpointRef(BaseModel):
    """A durable checkpoint to restore from."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    #: ``s3://<bucket>/jobs/<job>/ckpt/<step:012d>/``
    uri: str
    step: Step

    @model_validator(mode="after")
    def _uri_names_this_step(self) -> CheckpointRef:
        parsed = parse_checkpoint_uri(self.uri)
        if parsed is None:
            raise ValueError(f"uri {self.uri!r} is not s3://<bucket>/jobs/<job>/ckpt/<step:012d>/")
        if parsed[2] != self.step:
            raise ValueError(f"uri {self.uri!r} names step {parsed[2]}, not step {self.step}")
        return self

    @property
    def bucket(self) -> str:
        return self._parts[0]

    @property
    def job_id(self) -> str:
        return self._parts[1]

    @property
    def prefix(self) -> str:
        """The S3 key prefix of the checkpoint (no bucket)."""
        return checkpoint_prefix(self.job_id, self.step)

    @property
    def _parts(self) -> tuple[str, str, int]:
        parsed = parse_checkpoint_uri(self.uri)
        assert parsed is not None  # checked when the model was built
        return parsed


#: The Docker labels on an instance's containers (its agent's, ``agent``, and its job's, ``job``): whoever ends the
#: instance (the local fleet) finds them all.
CONTAINER_INSTANCE_LABEL = "ringfleet.instance"
CONTAINER_ROLE_LABEL = "ringfleet.role"


class Program(BaseModel):
    """What a job's workers run: the job's container image, its entrypoint and hyperparameters (from its spec)."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    image: _Image
    entrypoint: list[_Arg] = Field(min_length=1, max_length=256)
    hyperparameters: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=256)
    #: Steps between the job's regular S3 checkpoints.
    checkpoint_interval_steps: CheckpointIntervalSteps = DEFAULT_CHECKPOINT_INTERVAL_STEPS

    @classmethod
    def of(cls, spec: JobSubmitted) -> Program:
        return cls(
            image=spec.image,
            entrypoint=spec.entrypoint,
            hyperparameters=spec.hyperparameters,
            checkpoint_interval_steps=spec.checkpoint_interval_steps,
        )


class Reconfigure(MessageBase):
    """Re-form the ring: the new generation's members, their ranks, where to rendezvous and what to restore."""

    type: Literal["Reconfigure"] = "Reconfigure"
    job_id: JobId
    generation: Generation
    world_size: WorldSize
    #: instance id -> rank, for every member: exactly world_size entries with ranks 0..world_size-1.
    ranks: dict[InstanceId, Rank]
    #: ``host:port`` of rank 0's rendezvous (torch.distributed TCP store).
    rendezvous: str
    #: instance id -> private address, for the members whose address the control plane knows: a worker refuses a
    #: rendezvous on any other host than these (or its own loopback).
    hosts: dict[InstanceId, str] = Field(default_factory=dict)
    #: None: keep the in-memory state (survivors sync from each other); set: restore from this checkpoint.
    checkpoint: CheckpointRef | None = None
    #: What the job runs: an instance agent placed by this Reconfigure starts the program's entrypoint.
    program: Program | None = None
    #: instance id -> the training processes (slots) it runs, one per GPU; a member not named runs one. The ring's
    #: process ranks are contiguous per instance, in the order of ``ranks`` (see ``process_instances``): an instance
    #: joins and leaves with all its slots at once.
    slots: dict[InstanceId, SlotCount] = Field(default_factory=dict)

    @field_validator("rendezvous")
    @classmethod
    def _rendezvous_is_host_port(cls, value: str) -> str:
        split_host_port(value)
        return value

    @model_validator(mode="after")
    def _ranks_cover_the_world(self) -> Reconfigure:
        if len(self.ranks) != self.world_size:
            raise ValueError(f"ranks has {len(self.ranks)} entries but world_size is {self.world_size}")
        if sorted(self.ranks.values()) != list(range(self.world_size)):
            raise ValueError(f"ranks must assign each of 0..{self.world_size - 1} exactly once")
        if not set(self.hosts) <= set(self.ranks):
            raise ValueError(f"hosts names non-members: {', '.join(sorted(set(self.hosts) - set(self.ranks)))}")
        if not set(self.slots) <= set(self.ranks):
            raise ValueError(f"slots names non-members: {', '.join(sorted(set(self.slots) - set(self.ranks)))}")
        if self.checkpoint is not None and self.checkpoint.job_id != self.job_id:
            raise ValueError(f"checkpoint {self.checkpoint.uri!r} belongs to another job than {self.job_id!r}")
        return self

    def rank_of(self, instance_id: str) -> int | None:
        """This instance's rank in the new generation, or None when it is not a member (it should stop)."""
        return self.ranks.get(instance_id)

    def slots_of(self, instance_id: str) -> int:
        """How many training processes ``instance_id`` runs in this generation (1 unless ``slots`` says more)."""
        return self.slots.get(instance_id, 1)

    def process_instances(self) -> tuple[str, ...]:
        """The instance of each process rank of the ring: every member's slots in a row, members in rank order (a
        1-slot member then a 2-slot one: ``(a, b, b)``)."""
        members = sorted(self.ranks, key=self.ranks.__getitem__)
        return tuple(i for i in members for _ in range(self.slots_of(i)))

    @property
    def rendezvous_host(self) -> str:
        return split_host_port(self.rendezvous)[0]

    @property
    def rendezvous_port(self) -> int:
        return split_host_port(self.rendezvous)[1]


class Stop(MessageBase):
    """Stop training and exit (the job was cancelled or finished, or the instance left the job)."""

    type: Literal["Stop"] = "Stop"
    job_id: JobId
    generation: Generation
    reason: Reason


def _check_checkpoint_uri(uri: str, job_id: str, step: int) -> None:
    parsed = parse_checkpoint_uri(uri)
    if parsed is None:
        raise ValueError(f"uri {uri!r} is not s3://<bucket>/jobs/<job>/ckpt/<step:012d>/")
    if parsed[1:] != (job_id, step):
        raise ValueError(f"uri {uri!r} does not name job {job_id!r} at step {step}")


AppMessage = Annotated[JobSubmitted | JobCancelled | UpgradeJob, Field(discriminator="type")]
WorkerMessage = Annotated[Heartbeat | CheckpointCompleted | WorkerFailed | InstanceIdle, Field(discriminator="type")]
Command = Annotated[CheckpointNow | Reconfigure | Stop, Field(discriminator="type")]
Message = Annotated[
    JobSubmitted
    | JobCancelled
    | UpgradeJob
    | Heartbeat
    | CheckpointCompleted
    | WorkerFailed
    | InstanceIdle
    | CheckpointNow
    | Reconfigure
    | Stop,
    Field(discriminator="type"),
]

#: Every message class by its ``type``.
MESSAGE_TYPES: dict[str, type[MessageBase]] = {
    cls.__name__: cls
    for cls in (
        JobSubmitted,
        JobCancelled,
        UpgradeJob,
        Heartbeat,
        CheckpointCompleted,
        WorkerFailed,
        InstanceIdle,
        CheckpointNow,
        Reconfigure,
        Stop,
    )
}

_MESSAGE: TypeAdapter[Message] = TypeAdapter(Message, config=ConfigDict(defer_build=True, title="Message"))


def parse_message(raw: bytes | str | Mapping[str, Any]) -> Message:
    """Any message, chosen by its ``type``; raises pydantic's ValidationError naming the offending field."""
    if isinstance(raw, bytes | str):
        return _MESSAGE.validate_json(raw)
    return _MESSAGE.validate_python(dict(raw))


def encode_message(message: MessageBase) -> bytes:
    """The JSON bytes to publish; ``parse_message`` turns them back into an equal message."""
    return message.model_dump_json().encode()
