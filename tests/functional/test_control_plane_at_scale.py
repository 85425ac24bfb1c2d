"""The control plane's DynamoDB costs at fleet scale: a lost race answered by the failed write itself, a decision
and its nodes in one transaction, and a heartbeat sweep whose reads grow with the silent nodes, not the table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import boto3
import pytest
from ringfleet_local.cloud import LocalCloud

from ringfleet.adapters.dynamodb import NODE_SHARDS, DynamoDbJobRepository, DynamoDbNodeRepository, node_to_item
from ringfleet.core.jobs import JobState
from ringfleet.core.nodes import Node, NodeState
from ringfleet.recovery.service import RecoveryService
from tests.builders import instance, later, running_job
from tests.doubles import InMemoryInstanceLifecycle, RecordingCommandPublisher

pytestmark = pytest.mark.functional


class Clock:
    def __init__(self, seconds: float = 5) -> None:
        self.seconds = seconds

    def now(self) -> Any:
        return later(self.seconds)


class CountedResource:
    """A boto3 DynamoDB resource whose calls are counted by operation (botocore's before-call event)."""

    def __init__(self) -> None:
        self.resource = boto3.resource("dynamodb")
        self.calls: Counter[str] = Counter()
        self.resource.meta.client.meta.events.register("before-call.dynamodb.*", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1


@pytest.fixture
def counted(aws: LocalCloud) -> CountedResource:
    return CountedResource()


@pytest.fixture
def nodes_table(aws: LocalCloud) -> Iterator[str]:
    """A nodes table of this test's own, made like template.yaml's (a sweep reads the whole table's silent nodes)."""
    client = boto3.client("dynamodb")
    source = client.describe_table(TableName=str(aws.ctx.resolve({"Ref": "NodesTable"})))["Table"]
    name = f"{source['TableName']}-scale"
    client.create_table(
        TableName=name,
        KeySchema=source["KeySchema"],
        AttributeDefinitions=source["AttributeDefinitions"],
        BillingMode="PAY_PER_REQUEST",
        GlobalSecondaryIndexes=[
            {"IndexName": i["IndexName"], "KeySchema": i["KeySchema"], "Projection": i["Projection"]}
            for i in source["GlobalSecondaryIndexes"]
        ],
    )
    yield name
    client.delete_table(TableName=name)


def jobs_of(aws: LocalCloud, resource: Any, *, nodes_table: str | None = None) -> DynamoDbJobRepository:
    table = str(aws.ctx.resolve({"Ref": "JobsTable"}))
    return DynamoDbJobRepository(table, clock=Clock(), boto3_resource=resource, nodes_table=nodes_table)


def test_a_lost_race_returns_the_job_as_the_winner_left_it_without_a_second_read(
    aws: LocalCloud, counted: CountedResource
) -> None:
    jobs = jobs_of(aws, counted.resource)
    job, _ = running_job("scale-race")
    jobs.create(job)
    read = jobs.get("scale-race")
    assert read is not None
    assert jobs.save(replace(read, state=JobState.RECOVERING), decided_from=read)
    counted.calls.clear()
    # when a second decider saves from the same (now stale) read
    lost = jobs.save(replace(read, replacements_wanted=3), decided_from=read)
    # then the one write that failed also says what is stored now: no GetItem follows
    assert not lost
    assert lost.current is not None and lost.current.state is JobState.RECOVERING
    assert lost.current.revision == read.revision + 1
    assert counted.calls == Counter(UpdateItem=1)


def test_a_decision_and_the_nodes_it_changes_are_written_in_one_transaction_or_not_at_all(
    aws: LocalCloud, counted: CountedResource, nodes_table: str
) -> None:
    jobs = jobs_of(aws, counted.resource, nodes_table=nodes_table)
    nodes = DynamoDbNodeRepository(nodes_table, clock=Clock(), boto3_resource=counted.resource)
    job, job_nodes = running_job("scale-tx", members=2)
    jobs.create(job)
    for node in job_nodes:
        nodes.put(node)
    read = jobs.get("scale-tx")
    assert read is not None
    leaving = replace(job_nodes[0], state=NodeState.LEAVING)
    counted.calls.clear()
    # when a decision is saved with the node it changes
    saved = jobs.save(replace(read, state=JobState.RECOVERING), decided_from=read, nodes=[leaving])
    # then one round trip wrote both
    assert saved and saved.nodes_written
    assert counted.calls == Counter(TransactWriteItems=1)
    stored = nodes.get(leaving.instance_id)
    assert stored is not None and stored.state is NodeState.LEAVING
    # and a decision from the stale read writes neither, returning the job as stored
    lost_node = replace(job_nodes[1], state=NodeState.LOST)
    stale = jobs.save(replace(read, state=JobState.FAILED), decided_from=read, nodes=[lost_node])
    assert not stale and stale.current is not None and stale.current.state is JobState.RECOVERING
    unchanged = nodes.get(lost_node.instance_id)
    assert unchanged is not None and unchanged.state is NodeState.ACTIVE


def seed(table: str, count: int, *, start: int, at: Any) -> None:
    """``count`` healthy ACTIVE nodes heard from at ``at`` (batch writes: seeding is not what is measured)."""
    with boto3.resource("dynamodb").Table(table).batch_writer() as batch:
        for n in range(start, start + count):
            node = Node(
                instance_id=instance(0x200000 + n),
                job_id=f"healthy-{n // 10:05d}",
                state=NodeState.ACTIVE,
                rank=n % 10,
                generation=1,
                host=f"10.9.{n // 250 % 250}.{n % 250}",
                last_heartbeat=at,
                updated_at=at,
            )
            batch.put_item(Item=node_to_item(node))


def test_the_sweep_reads_grow_with_the_silent_nodes_not_with_the_table(
    aws: LocalCloud, counted: CountedResource, nodes_table: str
) -> None:
    clock = Clock(600)
    now = clock.now()
    jobs = jobs_of(aws, counted.resource, nodes_table=nodes_table)
    nodes = DynamoDbNodeRepository(nodes_table, clock=clock, boto3_resource=counted.resource)
    service = RecoveryService(
        jobs=jobs, nodes=nodes, publisher=RecordingCommandPublisher(), fleet=InMemoryInstanceLifecycle(), clock=clock
    )

    def silent_job(job_id: str, first: int) -> None:
        # a job of 4 whose member 1 went silent 5 minutes ago; the others heartbeat
        job, job_nodes = running_job(job_id, members=4, first=first)
        jobs.create(job)
        for node in job_nodes:
            heard = now - timedelta(seconds=300 if node.rank == 1 else 5)
            nodes.put(replace(node, last_heartbeat=heard, updated_at=heard))

    def sweep_calls() -> tuple[Counter[str], list[str]]:
        counted.calls.clear()
        outcomes = service.sweep(timedelta(seconds=90), now=now)
        return Counter(counted.calls), [o.outcome for o in outcomes]

    # given a small table: 100 healthy nodes and one job with a silent member
    seed(nodes_table, 100, start=0, at=now - timedelta(seconds=5))
    silent_job("scale-sweep-a", first=0x300000)
    small, small_outcomes = sweep_calls()
    # and then a table of 10,000 healthy nodes and another job with a silent member
    seed(nodes_table, 9_900, start=100, at=now - timedelta(seconds=5))
    silent_job("scale-sweep-b", first=0x300100)
    large, large_outcomes = sweep_calls()
    # then each sweep handled its one silent node, with the same calls: a query per shard, then that job's own
    assert len(small_outcomes) == len(large_outcomes) == 1
    assert large == small
    assert large["Query"] == NODE_SHARDS + 1  # the shards, then the silent node's job's nodes
    assert "Scan" not in large
    assert sum(large.values()) <= NODE_SHARDS + 4
