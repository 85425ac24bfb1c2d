"""Two fleet scaler runs at once, on moto: one fleet change applied, every instance placed in one job at most.

AWS runs the scaler one at a time (reserved concurrency 1); a retry overlapping a run, or the local cloud's
concurrent triggers, may not. Each run here is the real ``ScalerService`` on DynamoDB tables shaped as
template.yaml's and on the local cloud's EC2 Fleet gateway (moto); the runs are interleaved by wrapping one port.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import boto3
import pytest
from ringfleet_local.catalog import local_catalog
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.moto_fleet import MotoSpotFleetGateway
from ringfleet_local.spot_market import LocalSpotMarket

from ringfleet.adapters.dynamodb import DynamoDbJobRepository, DynamoDbNodeRepository
from ringfleet.adapters.scaling_state import DynamoDbScalingStateStore
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.nodes import Node, NodeState
from ringfleet.scaling.decisions import FleetState, ScalingPolicy
from ringfleet.scaling.service import ScalerService
from tests.builders import T0, spec
from tests.doubles import RecordingCommandPublisher

pytestmark = pytest.mark.functional

NOW = T0 + timedelta(minutes=1)


class Clock:
    def now(self) -> Any:
        return NOW


def copy_table(source: str) -> str:
    """An empty table shaped as ``source`` (keys and indexes): the scaler reads every active job, so it gets tables
    of its own, free of the other tests' jobs."""
    client = boto3.client("dynamodb")
    table = client.describe_table(TableName=source)["Table"]
    name = f"{source}-{uuid.uuid4().hex[:8]}"
    indexes = [
        {"IndexName": i["IndexName"], "KeySchema": i["KeySchema"], "Projection": i["Projection"]}
        for i in table.get("GlobalSecondaryIndexes", [])
    ]
    client.create_table(
        TableName=name,
        KeySchema=table["KeySchema"],
        AttributeDefinitions=table["AttributeDefinitions"],
        BillingMode="PAY_PER_REQUEST",
        **({"GlobalSecondaryIndexes": indexes} if indexes else {}),
    )
    return name


@dataclass
class Stack:
    jobs: DynamoDbJobRepository
    nodes: DynamoDbNodeRepository
    state: DynamoDbScalingStateStore
    fleet: CountingFleet
    publisher: RecordingCommandPublisher
    arrived: list[tuple[str, str]]

    def scaler(self, *, nodes: Any = None, state: Any = None, policy: ScalingPolicy | None = None) -> ScalerService:
        return ScalerService(
            jobs=self.jobs,
            nodes=nodes or self.nodes,
            fleet=self.fleet,
            prices=LocalSpotMarket(),
            catalog=local_catalog,
            state=state or self.state,
            publisher=self.publisher,
            on_capacity_arrived=lambda job, node: self.arrived.append((job, node.instance_id)),
            policy=policy,
        )


class CountingFleet(MotoSpotFleetGateway):
    """The local cloud's gateway, counting the fleet changes applied."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.changes: list[dict[str, int]] = []

    def set_targets(self, targets: dict[str, int], *, release: Sequence[str] = ()) -> None:
        self.changes.append(dict(targets))
        super().set_targets(targets, release=release)


@pytest.fixture
def stack(aws: LocalCloud) -> Stack:
    ddb = boto3.resource("dynamodb")
    clock = Clock()
    fleet = CountingFleet(
        stack=f"concurrency-{uuid.uuid4().hex[:8]}", launch_template="rf-worker", ec2_client=boto3.client("ec2")
    )
    return Stack(
        jobs=DynamoDbJobRepository(
            copy_table(str(aws.ctx.resolve({"Ref": "JobsTable"}))), clock=clock, boto3_resource=ddb
        ),
        nodes=DynamoDbNodeRepository(
            copy_table(str(aws.ctx.resolve({"Ref": "NodesTable"}))), clock=clock, boto3_resource=ddb
        ),
        state=DynamoDbScalingStateStore(
            copy_table(str(aws.ctx.resolve({"Ref": "ScalingStateTable"}))), boto3_resource=ddb
        ),
        fleet=fleet,
        publisher=RecordingCommandPublisher(),
        arrived=[],
    )


def pending(stack: Stack, *names: str) -> None:
    for name in names:
        job = Job(
            job_id=name,
            tenant="acme",
            state=JobState.PENDING,
            spec=spec(name, min_workers=2, max_workers=2),
            created_at=T0,
        )
        assert stack.jobs.create(job)


def placements(stack: Stack, job_ids: Sequence[str]) -> dict[str, set[str]]:
    """job -> the instances it runs on, each checked against the instance's node row."""
    out: dict[str, set[str]] = {}
    for job_id in job_ids:
        job = stack.jobs.get(job_id)
        assert job is not None
        out[job_id] = set(job.members)
        for instance in job.members:
            node = stack.nodes.get(instance)
            assert node is not None and node.job_id == job_id and node.state is NodeState.ACTIVE
    return out


def assert_each_instance_in_one_job(placed: dict[str, set[str]]) -> None:
    every = [i for members in placed.values() for i in members]
    assert len(every) == len(set(every))


class SameRead:
    """The scaler state's store, each ``load`` held until both runs loaded: both decide from the same read."""

    def __init__(self, store: DynamoDbScalingStateStore) -> None:
        self.store = store
        self.both_read = threading.Barrier(2, timeout=30)

    def load(self) -> tuple[FleetState, int]:
        loaded = self.store.load()
        self.both_read.wait()
        return loaded

    def save(self, state: FleetState, *, revision: int, report: dict[str, object]) -> bool:
        return self.store.save(state, revision=revision, report=report)


def test_two_runs_from_the_same_read_apply_one_fleet_change_and_the_loser_logs_its_refusal(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # given two PENDING jobs of two workers each and an empty fleet
    pending(stack, "same-read-a", "same-read-b")
    same_read = SameRead(stack.state)
    # when two scaler runs decide from the same read at once
    with caplog.at_level(logging.WARNING, logger="ringfleet.scaling.service"), ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(stack.scaler(state=same_read).reconcile, NOW) for _ in range(2)]
        reports = [r.result(timeout=60) for r in runs]
    # then the fleet was changed once: four instances launched, not eight
    assert len(stack.fleet.changes) == 1
    assert len(stack.fleet.snapshot().instances) == 4
    # and each job was started once, on instances of its own
    placed = placements(stack, ["same-read-a", "same-read-b"])
    assert all(len(m) == 2 for m in placed.values())
    assert_each_instance_in_one_job(placed)
    assert sorted(c.job_id for c in stack.publisher.published) == ["same-read-a", "same-read-b"]
    assert sorted(len(r.started) for r in reports) == [0, 2]
    # and the run that lost said so
    refusals = [r.getMessage() for r in caplog.records if "scaler run refused" in r.getMessage()]
    assert len(refusals) == 1
    # and the state saved is the winner's, once
    assert stack.state.load()[1] == 1


class HeldPlacement:
    """The nodes table, this run's first placement held until another run has finished."""

    def __init__(self, nodes: DynamoDbNodeRepository) -> None:
        self.nodes = nodes
        self.reached = threading.Event()
        self.go = threading.Event()

    def place(self, node: Node, *, over: Node | None) -> bool:
        if not self.reached.is_set():
            self.reached.set()
            assert self.go.wait(30)
        return self.nodes.place(node, over=over)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.nodes, name)


def test_a_run_that_read_before_another_placed_its_instances_places_none_of_them(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # given a fleet capped at two workers, a PENDING job, and a first run that launched two instances for it and is
    # about to place them
    pending(stack, "late-1")
    held = HeldPlacement(stack.nodes)
    capped = ScalingPolicy(fleet_max_workers=2)
    with caplog.at_level(logging.WARNING, logger="ringfleet.scaling.service"), ThreadPoolExecutor(1) as pool:
        first = pool.submit(stack.scaler(nodes=held, policy=capped).reconcile, NOW)
        assert held.reached.wait(60)
        # when a job that goes first (oldest first, ties by id) is admitted, and a second run reads, decides and
        # starts it on those two instances meanwhile; only then the first run goes on
        pending(stack, "late-0")
        second = stack.scaler(policy=capped).reconcile(NOW + timedelta(seconds=5))
        held.go.set()
        late = first.result(timeout=60)
    # then the fleet was changed once (the second run found it at its cap)
    assert len(stack.fleet.changes) == 1
    # and the two instances run the job the second run started, and nothing else
    assert second.started == ("late-0",) and late.started == ()
    placed = placements(stack, ["late-0"])
    assert placed["late-0"] == {i.instance_id for i in stack.fleet.snapshot().instances}
    waiting = stack.jobs.get("late-1")
    assert waiting is not None and waiting.state is JobState.PENDING and not waiting.members
    assert [c.job_id for c in stack.publisher.published] == ["late-0"]
    # and the first run's refusal was logged
    assert any("start of job late-1 refused" in r.getMessage() for r in caplog.records)


def test_a_placement_is_written_only_over_the_row_it_was_decided_from(stack: Stack) -> None:
    nodes = stack.nodes
    # given an instance with no node row: two runs place it, the second one from the same (empty) read
    first = Node("i-0000000000000c001", "job-a", host="10.0.0.1")
    assert nodes.place(first, over=None) is True
    assert nodes.place(Node("i-0000000000000c001", "job-b"), over=None) is False
    stored = nodes.get("i-0000000000000c001")
    assert stored is not None and stored.job_id == "job-a"
    # when its job lets it go (LOST) and a run places it again from that row, a run from the older read cannot
    lost = Node("i-0000000000000c001", "job-a", state=NodeState.LOST, updated_at=NOW)
    nodes.put(lost)
    assert nodes.place(Node("i-0000000000000c001", "job-c"), over=stored) is False
    assert nodes.place(Node("i-0000000000000c001", "job-c"), over=lost) is True
    assert nodes.place(Node("i-0000000000000c001", "job-d"), over=lost) is False
    final = nodes.get("i-0000000000000c001")
    assert final is not None and final.job_id == "job-c" and final.state is NodeState.PLACED
