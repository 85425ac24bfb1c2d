"""services/fleet_scaler: the sample schedule tick launches a fleet for a pending job (moto's EC2, with the local
cloud's EC2 Fleet gateway and spot market, as its Lambda host provides them) and starts the job on it; the same
tick again launches nothing more and sends nothing; a record on the scaling queue that is no event fails alone."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from ringfleet.core.jobs import Job, JobState
from ringfleet.core.nodes import NodeState
from tests.builders import T0, spec
from tests.functional.handlers import SAMPLE_JOB, CommandTap, Handler, handler_of, in_sqs, sample

pytestmark = [pytest.mark.functional, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def handler(broker_url: str) -> Iterator[Handler]:
    with handler_of("fleet_scaler", broker_url) as loaded:
        yield loaded


@pytest.fixture
def scaler(handler: Handler) -> Handler:
    """No instances, and the sample job admitted (PENDING, 2 to 4 workers)."""
    handler.reset()
    ec2 = boto3.client("ec2")
    if running := sorted(instances()):
        ec2.terminate_instances(InstanceIds=running)
    job = Job(
        job_id=SAMPLE_JOB,
        tenant="acme",
        state=JobState.PENDING,
        spec=spec(SAMPLE_JOB, min_workers=2, max_workers=4),
        created_at=T0,
    )
    handler.seed(job, [])
    return handler


def instances() -> set[str]:
    """The instances moto's EC2 runs (pending or running)."""
    reservations = boto3.client("ec2").describe_instances()["Reservations"]
    return {
        i["InstanceId"] for r in reservations for i in r["Instances"] if i["State"]["Name"] in {"pending", "running"}
    }


def test_a_tick_launches_a_fleet_for_the_pending_job_and_starts_it_once(scaler: Handler, commands: CommandTap) -> None:
    # when the sample tick fires
    report = scaler(sample("scheduled_event.json"))["scaling"]
    # then up to the job's most workers are launched, and the job runs on exactly them
    launched = instances()
    assert report["wanted"] == 4 and sum(report["targets"].values()) == 4 and len(launched) == 4
    assert report["started"] == [SAMPLE_JOB]
    job = scaler.jobs.get(SAMPLE_JOB)
    assert job is not None and job.state is JobState.RUNNING and job.generation == 1
    assert set(job.members) == launched
    assert all((n := scaler.nodes.get(i)) is not None and n.state is NodeState.ACTIVE for i in launched)
    (reconfigure,) = commands.drain()
    assert (reconfigure["type"], reconfigure["generation"], reconfigure["world_size"]) == ("Reconfigure", 1, 4)
    assert set(reconfigure["ranks"]) == launched
    # when the same tick comes again
    before = scaler.tables()
    again = scaler(sample("scheduled_event.json"))["scaling"]
    # then nothing more is launched or started, and the job, its nodes and its workers hear nothing new
    assert again["targets"] == report["targets"] and again["started"] == []
    assert instances() == launched
    after = scaler.tables()
    assert (after["JobsTable"], after["NodesTable"]) == (before["JobsTable"], before["NodesTable"])
    assert commands.drain() == []


def test_a_record_that_is_no_event_fails_alone_and_the_fleet_is_still_reconciled(scaler: Handler) -> None:
    # given a batch from the scaling queue: text that is no event, and the sample Job Admitted
    event = in_sqs("not json", sample("control_job_admitted.json"))
    bad = event["Records"][0]["messageId"]
    # when it arrives
    result = scaler(event)
    # then the bad record comes back to the queue, and the admitted job got its fleet all the same
    assert result["batchItemFailures"] == [{"itemIdentifier": bad}]
    assert result["scaling"]["started"] == [SAMPLE_JOB] and len(instances()) == 4
