"""services/node_recovery: the samples of events/ about one instance of the sample job, as the recovery queue
delivers them (SQS), change the job and its nodes; the same event twice changes nothing more and sends nothing
twice; a record that is not an event about an instance is reported as a batch item failure, the others applied."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ringfleet.core.jobs import JobState
from ringfleet.core.nodes import NodeState
from tests.functional.handlers import (
    MEMBERS,
    SAMPLE_JOB,
    CommandTap,
    Handler,
    handler_of,
    in_sqs,
    sample,
    seed_sample_ring,
    twice,
)

pytestmark = [pytest.mark.functional, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def handler(broker_url: str) -> Iterator[Handler]:
    with handler_of("node_recovery", broker_url) as loaded:
        yield loaded


@pytest.fixture
def node_recovery(handler: Handler) -> Handler:
    return seed_sample_ring(handler)


def test_a_spot_warning_asks_for_a_checkpoint_once_before_the_instance_goes(
    node_recovery: Handler, commands: CommandTap
) -> None:
    # when the sample spot interruption warning for rank 1 arrives from the recovery queue (twice)
    assert twice(node_recovery, sample("sqs_spot_interruption_warning.json")) == {"batchItemFailures": []}
    # then the job is recovering from it, the instance is leaving, and a replacement is wanted
    job = node_recovery.jobs.get(SAMPLE_JOB)
    assert job is not None and job.state is JobState.RECOVERING and job.generation == 3
    assert job.recovery is not None and job.recovery.leaving == (MEMBERS[1],)
    assert job.replacements_wanted == 1
    leaving = node_recovery.nodes.get(MEMBERS[1])
    assert leaving is not None and leaving.state is NodeState.LEAVING
    # and the workers were asked once for a checkpoint within the two minutes' notice
    (checkpoint_now,) = commands.drain()
    assert checkpoint_now["type"] == "CheckpointNow" and checkpoint_now["_to"] == f"{SAMPLE_JOB}.all"
    assert checkpoint_now["deadline"] == "2025-06-02T14:07:31Z"


def test_an_instance_terminated_without_notice_is_lost_and_the_others_reconfigure_once(
    node_recovery: Handler, commands: CommandTap
) -> None:
    # when the sample state change (rank 2's instance terminated) arrives from the recovery queue (twice)
    assert twice(node_recovery, in_sqs(sample("ec2_instance_state_change.json"))) == {"batchItemFailures": []}
    # then its node is lost and the two others form generation 4, told once
    job = node_recovery.jobs.get(SAMPLE_JOB)
    assert job is not None and job.generation == 4 and job.members == {MEMBERS[0]: 0, MEMBERS[1]: 1}
    lost = node_recovery.nodes.get(MEMBERS[2])
    assert lost is not None and lost.state is NodeState.LOST
    assert [(c["type"], c["generation"], c["world_size"]) for c in commands.drain()] == [("Reconfigure", 4, 2)]


def test_records_that_are_not_about_an_instance_fail_alone(node_recovery: Handler) -> None:
    # given a batch of text that is no event, an event about no instance, and the sample spot warning
    event = in_sqs("not json", sample("scheduled_event.json"), sample("ec2_spot_interruption_warning.json"))
    first, second, _ = (r["messageId"] for r in event["Records"])
    # when it arrives
    result = node_recovery(event)
    # then the first two come back to the queue (and to its DLQ after maxReceiveCount); the warning is applied
    assert result == {"batchItemFailures": [{"itemIdentifier": first}, {"itemIdentifier": second}]}
    job = node_recovery.jobs.get(SAMPLE_JOB)
    assert job is not None and job.state is JobState.RECOVERING
