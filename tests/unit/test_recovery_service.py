"""The recovery use case around plan_recovery: a broken ring's report finds the lost peer through the fleet, and a
job that loses capacity tells the fleet scaler at once."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from ringfleet.contracts import CheckpointCompleted, Heartbeat, Reconfigure, WorkerFailed, parse_cloud_event
from ringfleet.core.jobs import Job
from ringfleet.recovery.plan import NodeLost
from ringfleet.recovery.service import RecoveryService
from tests.builders import RecoveryWorld, cloud_event, instance, later
from tests.doubles import InMemoryInstanceLifecycle, RecordingCommandPublisher

pytestmark = pytest.mark.unit


class Clock:
    def now(self) -> Any:
        return later(5)


def world(members: int = 3) -> tuple[RecoveryService, InMemoryInstanceLifecycle, RecordingCommandPublisher, list[Any]]:
    w = RecoveryWorld.of(Clock(), members=members, max_workers=members)
    return w.service, w.fleet, w.publisher, w.events


def ring_failure(reporter: str, generation: int = 1) -> WorkerFailed:
    return WorkerFailed(
        job_id="digits-demo",
        instance_id=reporter,
        generation=generation,
        rank=0,
        step=42,
        reason="collective failed: Connection closed by peer",
        scope="ring",
        sent_at=later(4.8),
    )


def job_of(service: RecoveryService) -> Job:
    job = service.jobs.get("digits-demo")
    assert job is not None
    return job


def test_a_broken_ring_reported_by_both_survivors_reforms_once_without_the_instance_ec2_no_longer_runs() -> None:
    service, fleet, publisher, events = world()
    fleet.stopped.add(instance(2))  # hard-killed: EC2 reports it gone, nobody gave notice
    # when both survivors report their failed collective
    first = service.on_worker_failed(ring_failure(instance(1)))
    service.on_worker_failed(ring_failure(instance(3)))
    # then one Reconfigure re-forms the two survivors at generation 2, from memory
    reconfigures = [c for c in publisher.published if isinstance(c, Reconfigure)]
    assert [(c.generation, c.ranks) for c in reconfigures] == [(2, {instance(1): 0, instance(3): 1})]
    assert first.time_to_detect is not None and abs(first.time_to_detect - 0.2) < 1e-6
    # and the fleet scaler is told at once that the job wants one instance back
    (entry,) = events
    assert entry["Source"] == "ringfleet.control" and entry["DetailType"] == "Capacity Wanted"
    assert (
        parse_cloud_event(
            {
                "version": "0",
                "id": "x",
                "detail-type": entry["DetailType"],
                "source": entry["Source"],
                "account": "123456789012",
                "time": "2026-01-01T00:00:00Z",
                "region": "us-east-1",
                "resources": [],
                "detail": json.loads(entry["Detail"]),
            }
        ).detail.replacements
        == 1
    )  # type: ignore[union-attr]


def test_a_broken_ring_whose_members_all_run_is_left_to_the_heartbeat_sweep() -> None:
    service, _, publisher, events = world()
    outcome = service.on_worker_failed(ring_failure(instance(1)))
    assert "heartbeat sweep" in outcome.outcome
    assert publisher.published == [] and events == [] and job_of(service).generation == 1


def test_a_ring_failure_of_an_older_generation_decides_nothing() -> None:
    service, fleet, publisher, _ = world()
    fleet.stopped.add(instance(2))
    service.on_worker_failed(ring_failure(instance(1)))
    publisher.published.clear()
    # a late report from the ring that was already re-formed
    outcome = service.on_worker_failed(ring_failure(instance(3), generation=1))
    assert publisher.published == [] and "already re-formed" in outcome.outcome


def test_a_spot_warning_asks_the_scaler_for_a_replacement_while_the_instance_still_runs() -> None:
    service, _, _, events = world()
    warning = cloud_event(
        "EC2 Spot Instance Interruption Warning", instance(3), later(1), **{"instance-action": "terminate"}
    )
    service.on_node_event(parse_cloud_event(warning))  # type: ignore[arg-type]
    assert [e["DetailType"] for e in events] == ["Capacity Wanted"]
    # the same warning again is already being handled: no second announcement
    service.on_node_event(parse_cloud_event(warning))  # type: ignore[arg-type]
    assert len(events) == 1


def test_the_final_checkpoint_announces_the_finished_job_to_the_scaler() -> None:
    service, _, publisher, events = world()
    final = CheckpointCompleted(
        job_id="digits-demo",
        instance_id=instance(1),
        generation=1,
        step=240,
        uri="s3://ringfleet-checkpoints/jobs/digits-demo/ckpt/000000000240/",
        manifest_sha256="0" * 64,
        size_bytes=1234,
        final=True,
    )
    service.on_checkpoint_completed(final)
    service.on_checkpoint_completed(final)  # delivered twice
    assert job_of(service).state == "SUCCEEDED"
    assert [(e["DetailType"], json.loads(e["Detail"])["state"]) for e in events] == [("Job Finished", "SUCCEEDED")]
    assert publisher.published == []


def test_a_pool_reclaimed_at_once_asks_the_scaler_once_per_job() -> None:
    service, _, _, events = world(members=4)
    for n in (2, 3, 4):
        warning = cloud_event(
            "EC2 Spot Instance Interruption Warning", instance(n), later(1), **{"instance-action": "terminate"}
        )
        service.on_node_event(parse_cloud_event(warning))  # type: ignore[arg-type]
    assert job_of(service).replacements_wanted == 3
    assert [e["DetailType"] for e in events] == ["Capacity Wanted"]


def heartbeat(sender: str, sent_at: Any, generation: int = 1) -> Heartbeat:
    return Heartbeat(
        job_id="digits-demo",
        instance_id=sender,
        generation=generation,
        rank=0,
        world_size=3,
        step=150,
        samples_per_second=10.0,
        sent_at=sent_at,
    )


def test_a_heartbeat_dated_ahead_counts_from_when_it_was_received_so_the_sweep_still_finds_silence() -> None:
    service, _, _, _ = world()
    # a sender whose clock runs an hour ahead (or a forged message)
    outcome = service.on_heartbeat(heartbeat(instance(2), later(3600)), received_at=later(5))
    assert outcome.outcome == "recorded"
    node = service.nodes.get(instance(2))
    assert node is not None and node.last_heartbeat == later(5) and node.last_step == 150
    # so when it then goes silent while its peers keep beating, silence is judged from when it arrived
    for peer in (instance(1), instance(3)):
        assert service.on_heartbeat(heartbeat(peer, later(65)), received_at=later(65)).outcome == "recorded"
    (swept,) = service.sweep(later(60) - later(0), now=later(70))
    assert swept.outcome.startswith("lost without notice")
    assert job_of(service).members == {instance(1): 0, instance(3): 1}


def test_a_heartbeat_of_a_node_no_job_counts_is_ignored() -> None:
    service, _, _, _ = world()
    assert service.on_heartbeat(heartbeat(instance(99), later(4))).outcome.startswith("ignored")
    assert service.nodes.get(instance(99)) is None


def test_a_reformed_ring_keeps_its_survivors_slots_and_a_newcomer_brings_its_own() -> None:
    # given a ring of three whose second member's instance has four GPUs (its node, as the scaler placed it)
    w = RecoveryWorld.of(Clock(), members=3, max_workers=3)
    four = w.nodes.get(instance(2))
    assert four is not None
    w.nodes.put(replace(four, slots=4))
    # when the third member is lost without notice
    w.service.apply("digits-demo", NodeLost(instance(3), "instance-stopped", later(2)))
    # then the survivors re-form, the four-GPU member still running its 4 slots
    (shrunk,) = [c for c in w.publisher.published if isinstance(c, Reconfigure)]
    assert shrunk.world_size == 2 and shrunk.slots == {instance(2): 4}
    # and when the scaler hands the job a two-GPU replacement, the grown ring runs its 2 slots too
    w.service.on_capacity_arrived("digits-demo", instance(50), "10.0.0.50", slots=2)
    grown = [c for c in w.publisher.published if isinstance(c, Reconfigure)][-1]
    assert grown.world_size == 3 and grown.slots == {instance(2): 4, instance(50): 2}
    assert grown.process_instances() == (instance(1), *[instance(2)] * 4, instance(50), instance(50))
