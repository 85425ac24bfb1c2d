"""services/heartbeat_sweep: the sample schedule tick finds the member that went silent, which leaves the ring
without notice; the same tick twice changes nothing more; an event that is not a tick is refused, naming it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from ringfleet.core.jobs import JobState
from ringfleet.core.nodes import NodeState
from tests.builders import instance, running_job
from tests.functional.handlers import SAMPLE_FIRST_INSTANCE, SAMPLE_JOB, CommandTap, Handler, handler_of, sample

pytestmark = [pytest.mark.functional, pytest.mark.timeout(120)]

TICK = datetime(2025, 6, 2, 14, 31, tzinfo=UTC)  # scheduled_event.json's time
MEMBERS = [instance(SAMPLE_FIRST_INSTANCE + r) for r in range(3)]


@pytest.fixture(scope="module")
def handler(broker_url: str) -> Iterator[Handler]:
    with handler_of("heartbeat_sweep", broker_url) as loaded:
        yield loaded


@pytest.fixture
def sweep(handler: Handler) -> Handler:
    """The sample job at generation 3: ranks 0 and 1 heard from 10 s before the tick, rank 2 six minutes before."""
    handler.reset()
    job, nodes = running_job(SAMPLE_JOB, members=3, generation=3, first=SAMPLE_FIRST_INSTANCE)
    heard = [TICK - timedelta(seconds=10)] * 2 + [TICK - timedelta(minutes=6)]
    handler.seed(job, [replace(n, last_heartbeat=at, updated_at=at) for n, at in zip(nodes, heard, strict=True)])
    return handler


def test_the_silent_member_is_lost_and_the_others_reconfigure_once(sweep: Handler, commands: CommandTap) -> None:
    # when the sample tick fires (and is delivered twice)
    result = sweep(sample("scheduled_event.json"))
    after = sweep.tables()
    assert sweep(sample("scheduled_event.json")) == result
    assert sweep.tables() == after, "the second delivery changed the tables"
    # then rank 2, silent for six minutes as of the tick, was found and the job reconfigured without it
    assert result["swept_at"] == TICK.isoformat()
    (lost,) = result["lost"]
    assert (lost["job_id"], lost["generation"], lost["commands"]) == (SAMPLE_JOB, 4, ["Reconfigure"])
    node = sweep.nodes.get(MEMBERS[2])
    assert node is not None and node.state is NodeState.LOST
    # and the others form generation 4, told once
    job = sweep.jobs.get(SAMPLE_JOB)
    assert job is not None and job.state is JobState.RUNNING
    assert job.generation == 4 and job.members == {MEMBERS[0]: 0, MEMBERS[1]: 1}
    assert [(c["type"], c["generation"]) for c in commands.drain()] == [("Reconfigure", 4)]


def test_an_event_that_is_not_a_tick_is_refused_and_changes_nothing(sweep: Handler) -> None:
    before = sweep.tables()
    with pytest.raises(ValueError, match="'EC2 Spot Instance Interruption Warning' is not a scheduled event"):
        sweep(sample("ec2_spot_interruption_warning.json"))
    assert sweep.tables() == before
