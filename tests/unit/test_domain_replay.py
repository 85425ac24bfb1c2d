"""Replay: incidents delivered 3 times and shuffled end as one in-order delivery does, one Reconfigure a generation.

The recovery use case runs on in-memory repositories here, without Powertools idempotency: what is shown is that the
generation fence alone makes duplicated and reordered events harmless (idempotency only saves the work).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfleet.contracts import CheckpointCompleted, Reconfigure, parse_cloud_event
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.nodes import NodeState
from tests.builders import RecoveryWorld, cloud_event, instance, later

pytestmark = pytest.mark.unit


class Clock:
    def now(self) -> Any:
        return later(600)


class World(RecoveryWorld):
    def deliver(self, event: Any) -> None:
        if isinstance(event, CheckpointCompleted):
            self.service.on_checkpoint_completed(event)
        else:
            self.service.on_node_event(parse_cloud_event(event))

    def job(self) -> Job:
        job = self.jobs.get("digits-demo")
        assert job is not None
        return job

    def reconfigures(self) -> list[Reconfigure]:
        return [c for c in self.publisher.published if isinstance(c, Reconfigure)]


Incident = tuple[str, int]  # (kind, member index)


def checkpoint_completed(generation: int, step: int, at: Any) -> CheckpointCompleted:
    uri = f"s3://ringfleet-checkpoints/jobs/digits-demo/ckpt/{step:012d}/"
    return CheckpointCompleted(
        job_id="digits-demo",
        instance_id=instance(1),
        generation=generation,
        step=step,
        uri=uri,
        manifest_sha256="0" * 64,
        size_bytes=1,
        emergency=True,
        sent_at=at,
    )


def in_order(members: int, incidents: list[Incident]) -> tuple[World, list[Any]]:
    """Delivers each incident's events in the order AWS and the workers send them; returns them for replaying.

    A CheckpointCompleted carries the generation the workers were at when they sent it: the in-order one.
    """
    world, events, clock = World.of(Clock(), members=members), [], 0
    for kind, index in incidents:
        who = instance(1 + index)
        steps: list[Any] = []
        if kind in ("warning", "rebalance"):
            detail = (
                "EC2 Spot Instance Interruption Warning"
                if kind == "warning"
                else ("EC2 Instance Rebalance Recommendation")
            )
            steps.append(cloud_event(detail, who, later(clock := clock + 1)))
            steps.append(lambda: checkpoint_completed(world.job().generation, 100 + clock, later(clock + 1)))
        steps.append(cloud_event("EC2 Instance State-change Notification", who, later(clock := clock + 2)))
        for step in steps:
            event = step() if callable(step) else step
            world.deliver(event)
            events.append(event)
    return world, events


def assert_one_reconfigure_per_generation(world: World, start: int = 1) -> None:
    generations = [c.generation for c in world.reconfigures()]
    assert generations == list(range(start + 1, start + 1 + len(generations))), generations
    assert world.job().generation == start + len(generations)


def test_one_incident_delivered_three_times_shuffled_ends_as_in_order() -> None:
    # given a spot warning, its emergency checkpoint and the termination, as sent
    reference, events = in_order(4, [("warning", 2)])
    # when every event arrives three times, termination before the warning and the old checkpoint after the restart
    termination, warning, completed = events[2], events[0], events[1]
    replayed = World.of(Clock(), members=4)
    for event in [termination, termination, warning, termination, warning, completed, warning, completed, completed]:
        replayed.deliver(event)
    # then there is exactly one Reconfigure, of generation 2, and the same final job as in order
    assert [c.generation for c in replayed.reconfigures()] == [2]
    assert [c.generation for c in reference.reconfigures()] == [2]
    final, expected = replayed.job(), reference.job()
    assert (final.state, final.generation, dict(final.members)) == (
        expected.state,
        expected.generation,
        dict(expected.members),
    )
    assert replayed.nodes.get(instance(3)).state is NodeState.LOST  # type: ignore[union-attr]


incidents_strategy = st.lists(
    st.tuples(st.sampled_from(["warning", "rebalance", "termination"]), st.integers(min_value=1, max_value=5)),
    min_size=1,
    max_size=4,
    unique_by=lambda incident: incident[1],
)


@settings(max_examples=60, deadline=None)
@given(incidents=incidents_strategy, seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_random_incidents_duplicated_and_shuffled_end_in_the_same_ring_one_reconfigure_per_generation(
    incidents: list[Incident], seed: int
) -> None:
    # given several incidents on a job of six (member 0 never fails, so the job always survives), as sent
    reference, events = in_order(6, incidents)
    deliveries = events * 3
    random.Random(seed).shuffle(deliveries)
    # when they arrive three times each, in a random order
    replayed = World.of(Clock(), members=6)
    terminated: set[str] = set()
    for event in deliveries:
        replayed.deliver(event)
        if isinstance(event, dict) and event["detail-type"] == "EC2 Instance State-change Notification":
            terminated.add(event["detail"]["instance-id"])
        # then no Reconfigure ever names an instance whose termination was already delivered
        last = replayed.reconfigures()[-1:] or []
        assert not any(set(c.ranks) & terminated for c in last if c.generation == replayed.job().generation)
    # and generations grow one at a time, each with exactly one Reconfigure
    assert_one_reconfigure_per_generation(replayed)
    assert_one_reconfigure_per_generation(reference)
    # and the ring ends the same as after the in-order delivery: the survivors, in their original order
    final, expected = replayed.job(), reference.job()
    assert final.state is expected.state is JobState.RUNNING
    assert dict(final.members) == dict(expected.members)
    assert set(final.members) == {instance(1 + i) for i in range(6)} - {instance(1 + i) for _, i in incidents}
    assert replayed.reconfigures()[-1].ranks == dict(final.members)
    # and every terminated node is LOST, every member ACTIVE at the final generation
    for _, index in incidents:
        assert replayed.nodes.get(instance(1 + index)).state is NodeState.LOST  # type: ignore[union-attr]
    for member in final.members:
        node = replayed.nodes.get(member)
        assert node is not None and node.state is NodeState.ACTIVE and node.generation == final.generation
