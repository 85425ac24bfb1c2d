"""The job's outbox: a decision's commands are published once, even across a crash between its save and its publish,
and never while another writer is still publishing its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from ringfleet.contracts import JobCancelled, Stop
from ringfleet.core.commands import command_message_id, stop_command
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.nodes import Node
from ringfleet.core.outbox import Outbox
from ringfleet.core.ports import Saved
from ringfleet.intake.quotas import TenantRegistry
from ringfleet.intake.service import IntakeService
from tests.builders import later, running_job, spec
from tests.doubles import InMemoryJobRepository, ManualClock, RecordingCommandPublisher

pytestmark = pytest.mark.unit


class BrokenPublisher:
    def publish(self, commands: Sequence[Any]) -> None:
        raise ConnectionError("the broker went away")


def world() -> tuple[InMemoryJobRepository, RecordingCommandPublisher, ManualClock, Outbox]:
    clock = ManualClock(later(0))
    jobs, publisher = InMemoryJobRepository(clock), RecordingCommandPublisher()
    job, _ = running_job()
    jobs.create(job)
    return jobs, publisher, clock, Outbox(jobs=jobs, publisher=publisher)


def stored(jobs: InMemoryJobRepository) -> Job:
    job = jobs.get("digits-demo")
    assert job is not None
    return job


def test_a_decision_is_saved_its_command_published_once_and_cleared() -> None:
    jobs, publisher, clock, outbox = world()
    before = stored(jobs)
    stop = stop_command(before, "cancelled: done", clock.now())
    committed = outbox.commit(replace(before, replacements_wanted=2), decided_from=before, commands=[stop])
    assert committed and committed.stored is not None and committed.stored.revision == before.revision + 1
    assert publisher.published == [stop]
    job = stored(jobs)
    assert job.replacements_wanted == 2 and job.outbox == ()


def test_a_crash_between_save_and_publish_is_published_once_by_the_next_reader_after_the_grace() -> None:
    jobs, publisher, clock, _ = world()
    before = stored(jobs)
    stop = stop_command(before, "cancelled: done", clock.now())
    # given a writer whose decision was saved, then whose publish failed (its run died there)
    crashed = Outbox(jobs=jobs, publisher=BrokenPublisher())
    with pytest.raises(ConnectionError):
        crashed.commit(replace(before, replacements_wanted=2), decided_from=before, commands=[stop])
    assert [c["type"] for c in stored(jobs).outbox] == ["Stop"]
    reader = Outbox(jobs=jobs, publisher=publisher)
    # when a reader comes by within the grace, the writer may still be publishing: it is left alone
    clock.advance(10)
    assert reader.flush(stored(jobs), now=clock.now()) == stored(jobs)
    assert publisher.published == []
    # when the next reader comes after the grace, it publishes the Stop and clears it
    clock.advance(21)
    flushed = reader.flush(stored(jobs), now=clock.now())
    assert flushed is not None and flushed.outbox == () == stored(jobs).outbox
    assert flushed.revision == stored(jobs).revision  # the reader goes on deciding from the job as now stored
    assert [(type(c), c.message_id) for c in publisher.published] == [(Stop, stop.message_id)]
    # and a reader after it has nothing left to publish
    clock.advance(60)
    reader.flush(stored(jobs), now=clock.now())
    assert len(publisher.published) == 1


def test_a_stale_decision_publishes_nothing_and_returns_what_the_other_writer_saved() -> None:
    jobs, publisher, clock, outbox = world()
    before = stored(jobs)
    assert jobs.save(replace(before, replacements_wanted=5), decided_from=before)  # another writer got there first
    committed = outbox.commit(before, decided_from=before, commands=[stop_command(before, "x", clock.now())])
    assert not committed and committed.current == stored(jobs)
    assert publisher.published == [] and stored(jobs).replacements_wanted == 5 and stored(jobs).outbox == ()


def test_commands_another_writer_is_still_publishing_stay_in_the_outbox_for_it() -> None:
    jobs, publisher, clock, outbox = world()
    before = stored(jobs)
    # given another writer's command just saved in the outbox (it is publishing it now)
    theirs = stop_command(before, "theirs", clock.now()).model_copy(
        update={"message_id": command_message_id("digits-demo", 1, "CheckpointNow:theirs")}
    )
    assert jobs.save(replace(before, outbox=(theirs.model_dump(mode="json"),)), decided_from=before)
    before = stored(jobs)
    clock.advance(1)
    # when this writer's decision is committed
    mine = stop_command(before, "mine", clock.now())
    assert outbox.commit(replace(before, replacements_wanted=1), decided_from=before, commands=[mine])
    # then only its own command is published and cleared; the other writer's stays for it
    assert publisher.published == [mine]
    assert [c["message_id"] for c in stored(jobs).outbox] == [str(theirs.message_id)]


def test_a_save_that_landed_before_its_retry_failed_counts_as_saved_and_is_published() -> None:
    jobs, publisher, clock, outbox = world()
    save = jobs.save

    def landed_then_retried(job: Job, *, decided_from: Job, nodes: Sequence[Node] = ()) -> Saved:
        # the first attempt landed but timed out; the SDK's retry finds the job already moved, by this very write
        assert save(job, decided_from=decided_from, nodes=nodes)
        return Saved(False, current=jobs.get(job.job_id))

    jobs.save = landed_then_retried  # type: ignore[method-assign]
    before = stored(jobs)
    stop = stop_command(before, "cancelled: done", clock.now())
    committed = outbox.commit(replace(before, replacements_wanted=2), decided_from=before, commands=[stop])
    jobs.save = save  # type: ignore[method-assign]
    assert committed and publisher.published == [stop]


def test_a_cancel_whose_run_died_before_its_stop_went_out_is_stopped_by_the_redelivered_cancel() -> None:
    clock = ManualClock(later(0))
    jobs, publisher = InMemoryJobRepository(clock), RecordingCommandPublisher()

    def intake(publisher: Any) -> IntakeService:
        registry = TenantRegistry.register("acme")
        return IntakeService(jobs=jobs, publisher=publisher, put_events=lambda e: None, tenants=registry, clock=clock)

    intake(publisher).on_submitted(spec("job-1"))
    cancel = JobCancelled(tenant="acme", job_id="job-1", reason="done")
    # given a cancel saved, whose run died publishing its Stop (the broker went away)
    with pytest.raises(ConnectionError):
        intake(BrokenPublisher()).on_cancelled(cancel)
    job = jobs.get("job-1")
    assert job is not None and job.state == JobState.CANCELLED and [c["type"] for c in job.outbox] == ["Stop"]
    # when the cancel is redelivered after the grace
    clock.advance(60)
    assert intake(publisher).on_cancelled(cancel).outcome == "duplicate"
    # then the workers get their Stop, once
    assert [c.type for c in publisher.published] == ["Stop"]
    intake(publisher).on_cancelled(cancel)
    assert len(publisher.published) == 1 and jobs.get("job-1").outbox == ()  # type: ignore[union-attr]
