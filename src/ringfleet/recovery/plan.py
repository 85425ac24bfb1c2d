"""What ``plan_recovery`` decides on and what it returns: the recovery signals and the RecoveryPlan.

Each signal is decided in a module of its own (``notice``, ``loss``, ``checkpoint``, ``capacity``, ``script_failure``,
``rolling``); ``ringfleet.recovery.signals`` says which report amounts to which signal.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointNow, Reconfigure, Stop
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import LifecycleHook

__all__ = [
    "CapacityArrived",
    "CheckpointTaken",
    "LossCause",
    "NodeLost",
    "NoticeCause",
    "NoticeGiven",
    "RecoveryPlan",
    "RetireRequested",
    "ScriptFailed",
    "Signal",
    "unchanged",
]

NoticeCause = Literal["spot-interruption", "rebalance", "lifecycle-terminate"]
LossCause = Literal["instance-stopped", "heartbeat-lost", "worker-failed"]


@dataclass(frozen=True)
class NoticeGiven:
    """An instance will go: spot interruption warning, rebalance recommendation or ASG terminate hook."""

    instance_id: str
    cause: NoticeCause
    at: datetime
    deadline: datetime | None = None
    lifecycle_hook: LifecycleHook | None = None


@dataclass(frozen=True)
class NodeLost:
    """An instance is gone without notice: stopped or terminated, silent, or its worker failed."""

    instance_id: str
    cause: LossCause
    at: datetime
    #: The generation a worker reported its failure at; None for cloud events, which carry none.
    generation: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class CheckpointTaken:
    """Rank 0 reported a checkpoint in S3 (CheckpointCompleted)."""

    generation: int
    step: int
    at: datetime
    emergency: bool = False
    #: The job's last step: the job is done.
    final: bool = False


@dataclass(frozen=True)
class CapacityArrived:
    """An instance was placed on the job and is running: a replacement or spare the ring can take in."""

    instance_id: str
    at: datetime
    host: str | None = None
    #: Its instance's slots (``Node.slots``), carried as its host is: the scaler's word, not a read of its node.
    slots: int = 1


@dataclass(frozen=True)
class ScriptFailed:
    """The job's own script failed on a member (raised, exited non-zero, never called init(), no entrypoint).

    The instance is fine: its agent waits for the next Reconfigure to run the script again.
    """

    instance_id: str
    #: The generation the script ran in.
    generation: int
    at: datetime
    #: What the worker reported: the failure, ending with the last lines of its traceback.
    reason: str
    step: int | None = None


@dataclass(frozen=True)
class RetireRequested:
    """The fleet scaler found spot room for a job's on-demand member: replace it with a spot worker."""

    instance_id: str
    at: datetime


Signal = NoticeGiven | NodeLost | CheckpointTaken | CapacityArrived | ScriptFailed | RetireRequested


@dataclass(frozen=True)
class RecoveryPlan:
    """What to save and send. ``job is before`` (identity) when the signal changes nothing."""

    before: Job
    job: Job
    commands: tuple[CheckpointNow | Reconfigure | Stop, ...] = ()
    #: Why, in words, for the log.
    outcome: str = ""
    #: Metric name -> value (seconds or counts) for the handler to emit once the plan is saved.
    metrics: Mapping[str, float] = field(default_factory=dict)
    #: What started the recovery this plan completes (set when it reconfigures).
    cause: str | None = None

    @property
    def changed(self) -> bool:
        return self.job is not self.before

    @property
    def reconfigured(self) -> bool:
        return self.job.generation > self.before.generation


def unchanged(job: Job, outcome: str) -> RecoveryPlan:
    """The plan of a signal that changes nothing (ignored, or already handled), with why."""
    return RecoveryPlan(before=job, job=job, outcome=outcome)
