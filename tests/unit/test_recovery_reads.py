"""What the recovery use case reads and writes per signal: a notice reads one node, a publish clears without a read.

Each round trip here is one to DynamoDB in Lambda; in a burst of a thousand spot warnings they are the cost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import pytest

from ringfleet.contracts import CheckpointNow, Reconfigure, parse_cloud_event
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.nodes import Node, NodeState
from ringfleet.core.ports import Saved
from ringfleet.recovery.service import RecoveryService
from tests.builders import cloud_event, instance, later, running_job
from tests.doubles import (
    InMemoryInstanceLifecycle,
    InMemoryJobRepository,
    InMemoryNodeRepository,
    RecordingCommandPublisher,
)

pytestmark = pytest.mark.unit

WARNING = "EC2 Spot Instance Interruption Warning"
REBALANCE = "EC2 Instance Rebalance Recommendation"


class Clock:
    def now(self) -> Any:
        return later(600)


class CountingJobs(InMemoryJobRepository):
    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.calls: Counter[str] = Counter()

    def get(self, job_id: str) -> Job | None:
        self.calls["get"] += 1
        return super().get(job_id)

    def save(self, job: Job, *, decided_from: Job, nodes: Sequence[Node] = ()) -> Saved:
        self.calls["save"] += 1
        return super().save(job, decided_from=decided_from, nodes=nodes)


class CountingNodes(InMemoryNodeRepository):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter[str] = Counter()

    def list_by_job(self, job_id: str) -> list[Node]:
        self.calls["list_by_job"] += 1
        return super().list_by_job(job_id)


def world(spares: tuple[str, ...] = ()) -> tuple[RecoveryService, CountingJobs, CountingNodes, list[Any]]:
    clock = Clock()
    jobs, nodes, publisher = CountingJobs(clock), CountingNodes(), RecordingCommandPublisher()
    job, job_nodes = running_job(members=4)
    jobs.create(replace(job, spares=spares))
    for node in job_nodes:
        nodes.put(node)
    for n, spare in enumerate(spares):
        nodes.put(Node(instance_id=spare, job_id=job.job_id, state=NodeState.PLACED, host=f"10.0.1.{n}"))
    service = RecoveryService(
        jobs=jobs, nodes=nodes, publisher=publisher, fleet=InMemoryInstanceLifecycle(), clock=clock
    )
    jobs.calls.clear()
    return service, jobs, nodes, publisher.published


def test_a_warning_reads_the_job_and_its_own_node_only_and_clears_the_outbox_without_reading_again() -> None:
    service, jobs, nodes, published = world()
    # when the first warning of the job arrives
    service.on_node_event(parse_cloud_event(cloud_event(WARNING, instance(2), later(1))))
    # then the job is read once and saved twice (the decision with its command, then the outbox cleared) ...
    assert jobs.calls == Counter(get=1, save=2)
    assert [type(c) for c in published] == [CheckpointNow]
    job = jobs.get("digits-demo")
    assert job is not None and job.outbox == () and job.state is JobState.RECOVERING
    # ... no other node is read, and the warned node is LEAVING
    assert nodes.calls["list_by_job"] == 0
    assert [n.state for n in nodes.list_by_job("digits-demo")] == [
        NodeState.ACTIVE,
        NodeState.LEAVING,
        NodeState.ACTIVE,
        NodeState.ACTIVE,
    ]


def test_a_second_warning_asks_nothing_more_and_reads_no_other_node() -> None:
    service, jobs, nodes, published = world()
    service.on_node_event(parse_cloud_event(cloud_event(WARNING, instance(2), later(1))))
    jobs.calls.clear()
    # when a second member is warned while the checkpoint is awaited
    service.on_node_event(parse_cloud_event(cloud_event(WARNING, instance(3), later(2))))
    # then one read, one save, no command and no node listing
    assert jobs.calls == Counter(get=1, save=1)
    assert len(published) == 1
    assert nodes.calls["list_by_job"] == 0
    job = jobs.get("digits-demo")
    assert job is not None and job.recovery is not None and job.recovery.leaving == (instance(2), instance(3))
    assert job.replacements_wanted == 2


def test_a_rebalance_that_migrates_to_a_spare_reads_every_node_for_the_new_ring() -> None:
    service, _, nodes, published = world(spares=(instance(40),))
    # when a rebalance recommendation arrives while a spare is there
    service.on_node_event(parse_cloud_event(cloud_event(REBALANCE, instance(1), later(1))))
    # then the ring is re-formed from every node of the job: the spare's host is rank 0's rendezvous
    assert nodes.calls["list_by_job"] == 1
    (reconfigure,) = published
    assert isinstance(reconfigure, Reconfigure)
    assert reconfigure.generation == 2 and reconfigure.rendezvous.startswith("10.0.0.2:")
    states = {n.instance_id: n.state for n in nodes.list_by_job("digits-demo")}
    assert states[instance(1)] is NodeState.LOST and states[instance(40)] is NodeState.ACTIVE


def test_an_outbox_another_writer_touched_meanwhile_is_cleared_from_what_the_failed_write_returned() -> None:
    service, jobs, _, published = world()
    save = jobs.save
    raced: list[bool] = []

    def save_then_race(job: Job, *, decided_from: Job, nodes: Sequence[Node] = ()) -> Saved:
        saved = save(job, decided_from=decided_from, nodes=nodes)
        if job.outbox and not raced:
            # another writer saves right after the decision, keeping its outbox (its commands not yet published)
            raced.append(True)
            stored = jobs.get(job.job_id)
            assert stored is not None
            assert save(replace(stored, replacements_wanted=stored.replacements_wanted + 1), decided_from=stored)
        return saved

    jobs.save = save_then_race  # type: ignore[method-assign]
    service.on_node_event(parse_cloud_event(cloud_event(WARNING, instance(2), later(1))))
    # then the blind clear misses, the job it returns clears it without a read (the one read besides the service's
    # own is the racing writer's), and the other writer's change stays
    assert jobs.calls["get"] == 2
    job = jobs.get("digits-demo")
    assert job is not None and job.outbox == () and job.replacements_wanted == 2
    assert len(published) == 1


def test_a_notice_retried_after_a_crash_before_the_node_sync_brings_every_node_in_line() -> None:
    service, _, nodes, published = world(spares=(instance(40),))
    put = nodes.put

    def crash(node: Node) -> None:
        raise RuntimeError("the execution environment died")

    # given a rebalance whose ring change was saved and published, then the run died before syncing the nodes
    nodes.put = crash  # type: ignore[method-assign]
    event = cloud_event(REBALANCE, instance(1), later(1))
    with pytest.raises(RuntimeError):
        service.on_node_event(parse_cloud_event(event))
    nodes.put = put  # type: ignore[method-assign]
    assert len(published) == 1
    assert {n.instance_id: n.state for n in nodes.list_by_job("digits-demo")}[instance(40)] is NodeState.PLACED
    # when the event comes back (its queue retries it): its decision is already made
    service.on_node_event(parse_cloud_event(event))
    # then nothing more is published, and every node is brought in line with the job, the joined spare included
    assert len(published) == 1
    states = {n.instance_id: (n.state, n.rank) for n in nodes.list_by_job("digits-demo")}
    assert states[instance(40)] == (NodeState.ACTIVE, 3)
    assert states[instance(1)] == (NodeState.LOST, None)


def test_a_sweep_isolates_one_jobs_failure_and_reports_it() -> None:
    clock = Clock()
    jobs, nodes = CountingJobs(clock), CountingNodes()
    for job_id, first in (("broken", 1), ("healthy", 11)):
        job, job_nodes = running_job(job_id, members=2, first=first)
        jobs.create(job)
        for node in job_nodes:
            nodes.put(replace(node, last_heartbeat=later(0), updated_at=later(0)))

    class FailingFor(RecordingCommandPublisher):
        def publish(self, commands: Sequence[Any]) -> None:
            if any(c.job_id == "broken" for c in commands):
                raise ConnectionError("broker refused")
            super().publish(commands)

    publisher = FailingFor()
    service = RecoveryService(
        jobs=jobs, nodes=nodes, publisher=publisher, fleet=InMemoryInstanceLifecycle(), clock=clock
    )
    # when every node of both jobs went silent and the broken job's commands cannot be published
    outcomes = service.sweep(later(600) - later(500))
    # then the healthy job's losses are handled and the broken job's failure is reported, not raised
    failed = {o.job_id for o in outcomes if o.outcome.startswith("failed: ConnectionError")}
    assert failed == {"broken"}
    assert any(c.job_id == "healthy" for c in publisher.published)


def test_a_lost_race_is_retried_after_a_jittered_pause_not_at_once() -> None:
    service, jobs, _, _ = world()
    pauses: list[float] = []
    service.sleep = pauses.append
    save = jobs.save
    losses = [3]

    def lose_three_times(job: Job, *, decided_from: Job, nodes: Sequence[Node] = ()) -> Saved:
        if losses[0]:
            losses[0] -= 1
            return Saved(False, current=decided_from)
        return save(job, decided_from=decided_from, nodes=nodes)

    jobs.save = lose_three_times  # type: ignore[method-assign]
    service.on_node_event(parse_cloud_event(cloud_event(WARNING, instance(2), later(1))))
    # then it paused before each retry, within the growing bound, and re-read nothing (the failed write said it)
    assert len(pauses) == 3
    assert all(0 <= p <= 0.01 * 2**n for n, p in enumerate(pauses, start=1))
    assert jobs.calls["get"] == 1
