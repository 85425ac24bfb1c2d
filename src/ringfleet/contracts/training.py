"""What a training worker reports of its own run, as typed JSON lines: steps, rings joined, failures, the end.

The worker appends one event a line to the file ``RINGFLEET_EVENTS_FILE`` names (the local fleet sets one per
instance, beside its log); the demo, its report and the tests read these, never the human log lines, which are free
to change. Every event carries the worker's own clock (``at``, seconds since the epoch) and its instance.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

__all__ = [
    "EVENTS_FILE_VARIABLE",
    "CollectiveFailed",
    "GenerationJoined",
    "RankLeft",
    "RingShrank",
    "StateSynced",
    "StepTaken",
    "TrainingEvent",
    "TrainingFinished",
    "parse_training_event",
]

#: The variable that names the file a worker appends its events to (unset: the worker writes none).
EVENTS_FILE_VARIABLE = "RINGFLEET_EVENTS_FILE"

_Count = Annotated[int, Field(ge=0)]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    at: float
    instance_id: str = Field(min_length=1, max_length=64)
    #: The job the worker served then (None: a standalone run, or not placed yet): an instance serves one job after
    #: another, and a job's tools find its instances by it after they moved on (``ringfleet logs``).
    job_id: str | None = Field(default=None, max_length=128)
    generation: _Count


class StepTaken(_Event):
    """A progress report of rank ``rank`` (every few steps): the step it reached and its last reported loss."""

    event: Literal["StepTaken"] = "StepTaken"
    step: _Count
    rank: _Count
    world: Annotated[int, Field(ge=1)]
    loss: float | None = None


class GenerationJoined(_Event):
    """The worker joins generation ``generation``'s ring as ``rank`` of ``world``."""

    event: Literal["GenerationJoined"] = "GenerationJoined"
    rank: _Count
    world: Annotated[int, Field(ge=1)]


class StateSynced(_Event):
    """The (re-)formed ring agreed on its training state: every rank holds that of ``step``."""

    event: Literal["StateSynced"] = "StateSynced"
    step: _Count


class CollectiveFailed(_Event):
    """A collective failed at step ``reached``: the worker rolled back to its commit of ``step``."""

    event: Literal["CollectiveFailed"] = "CollectiveFailed"
    reached: _Count
    step: _Count


class RankLeft(_Event):
    """The worker leaves the generation's ring after step ``reached`` (a notice, or a membership change)."""

    event: Literal["RankLeft"] = "RankLeft"
    reached: _Count


class RingShrank(_Event):
    """The ring went on without some of its ranks at step ``step``, ``world`` strong, in the same generation."""

    event: Literal["RingShrank"] = "RingShrank"
    step: _Count
    world: Annotated[int, Field(ge=1)]


class TrainingFinished(_Event):
    """The worker's run ended: ``done`` (the script returned) or ``stopped`` (told to stop), at ``step``."""

    event: Literal["TrainingFinished"] = "TrainingFinished"
    outcome: Literal["done", "stopped"]
    step: _Count


TrainingEvent = Annotated[
    StepTaken | GenerationJoined | StateSynced | CollectiveFailed | RankLeft | RingShrank | TrainingFinished,
    Field(discriminator="event"),
]
_ADAPTER: TypeAdapter[TrainingEvent] = TypeAdapter(TrainingEvent)


def parse_training_event(line: str | bytes) -> TrainingEvent:
    """One line of an events file as its event; ``pydantic.ValidationError`` when it is not one."""
    return _ADAPTER.validate_json(line)
