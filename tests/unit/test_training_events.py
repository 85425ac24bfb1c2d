"""The workers' typed training events: what a worker writes, the demo and the tests read back (whole lines only)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from ringfleet_local.training_events import EventFollower, events_file

from ringfleet.contracts.training import (
    CollectiveFailed,
    GenerationJoined,
    RankLeft,
    RingShrank,
    StateSynced,
    StepTaken,
    TrainingFinished,
    parse_training_event,
)
from training_worker.events import EventLog

pytestmark = pytest.mark.unit


def test_every_event_a_worker_writes_is_read_back_as_the_same_typed_event_in_time_order(tmp_path: Path) -> None:
    # given two workers writing their events into the fleet's log folder
    a, b = EventLog(events_file(tmp_path, "i-a"), "i-a"), EventLog(events_file(tmp_path, "i-b"), "i-b")
    follower = EventFollower(tmp_path)
    a.emit(GenerationJoined, generation=1, rank=0, world=2)
    b.emit(GenerationJoined, generation=1, rank=1, world=2)
    a.emit(StateSynced, generation=1, step=0)
    a.emit(StepTaken, generation=1, step=10, rank=0, world=2, loss=0.5)
    b.emit(StepTaken, generation=1, step=10, rank=1, world=2, loss=None)
    a.emit(CollectiveFailed, generation=1, reached=12, step=11)
    b.emit(RankLeft, generation=1, reached=12)
    a.emit(RingShrank, generation=1, step=11, world=1)
    a.emit(TrainingFinished, generation=1, outcome="done", step=40)
    # when the demo follows the folder
    events = follower.poll()
    # then it reads every event, typed, in the workers' time order, each naming its instance
    kinds = [type(e).__name__ for e in events]
    assert kinds.count("GenerationJoined") == 2 and kinds[-1] == "TrainingFinished"
    assert [e.at for e in events] == sorted(e.at for e in events)
    step = next(e for e in events if isinstance(e, StepTaken) and e.rank == 0)
    assert (step.instance_id, step.step, step.world, step.loss) == ("i-a", 10, 2, 0.5)
    assert next(e for e in events if isinstance(e, StepTaken) and e.rank == 1).loss is None
    # and a second poll reads only what was written since
    assert follower.poll() == []
    a.emit(StepTaken, generation=2, step=11, rank=0, world=1)
    assert [e.generation for e in follower.poll()] == [2]


def test_a_half_written_line_waits_and_a_line_that_is_no_event_is_skipped(tmp_path: Path) -> None:
    path = events_file(tmp_path, "i-a")
    whole = StateSynced(at=1.0, instance_id="i-a", generation=3, step=7).model_dump_json()
    path.write_text(whole + "\n" + "not an event\n" + whole[:20])
    follower = EventFollower(tmp_path)
    assert [e.generation for e in follower.poll()] == [3]
    assert follower.unreadable == 1
    with path.open("a") as f:
        f.write(whole[20:] + "\n")
    assert [type(e) for e in follower.poll()] == [StateSynced]


def test_a_worker_without_an_events_file_writes_nothing_and_a_wrong_event_is_refused(tmp_path: Path) -> None:
    EventLog.from_env("i-a", env={}).emit(StateSynced, generation=1, step=0)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValidationError):
        parse_training_event('{"event": "StepTaken", "at": 1, "instance_id": "i-a", "generation": 1, "step": -1}')
    with pytest.raises(ValidationError):
        parse_training_event('{"event": "Guessed", "at": 1, "instance_id": "i-a", "generation": 1}')


def test_a_jobs_instances_are_found_by_their_events_after_they_served_another(tmp_path: Path) -> None:
    # given an instance that trained job "first", then (started again, unplaced, then placed) job "second"
    from ringfleet_cli.logs import served_by

    job: list[str | None] = ["first"]
    log = EventLog(events_file(tmp_path, "i-a"), "i-a", job=lambda: job[0])
    log.emit(StepTaken, generation=1, step=10, rank=0, world=1, loss=0.5)
    job[0] = "second"
    log.emit(StepTaken, generation=1, step=10, rank=0, world=1, loss=0.4)
    EventLog(events_file(tmp_path, "i-b"), "i-b", job=lambda: "second").emit(
        GenerationJoined, generation=1, rank=1, world=2
    )
    # then each event names the job it was written for, and `ringfleet logs` finds each job's instances by them
    assert [e.job_id for e in EventFollower(tmp_path).poll()] == ["first", "second", "second"]
    assert served_by(tmp_path, "first") == {"i-a"}
    assert served_by(tmp_path, "second") == {"i-a", "i-b"}
