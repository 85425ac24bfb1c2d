"""Only a job's own nodes speak for it: one broker user serves every worker, so a worker of job A naming job B in a
CheckpointCompleted, WorkerFailed or Heartbeat must change nothing of B (``recovery.signals.reporter_refusal``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from ringfleet.contracts import CheckpointCompleted, Heartbeat, WorkerFailed
from ringfleet.core.jobs import JobState
from ringfleet.core.nodes import NodeState
from ringfleet.recovery.signals import reporter_refusal
from tests.builders import RecoveryWorld, instance, later, running_job

pytestmark = pytest.mark.unit


class Clock:
    def now(self) -> Any:
        return later(5)


def two_jobs() -> RecoveryWorld:
    """digits-demo (members i-1..i-3, generation 1) and other-job (members i-11, i-12) on the same adapters."""
    w = RecoveryWorld.of(Clock(), members=3, max_workers=3)
    other, other_nodes = running_job("other-job", members=2, first=11)
    w.jobs.create(other)
    for node in other_nodes:
        w.nodes.put(node)
    return w


def final_checkpoint(job_id: str, reporter: str, generation: int = 1) -> CheckpointCompleted:
    return CheckpointCompleted(
        job_id=job_id,
        instance_id=reporter,
        generation=generation,
        step=999,
        uri="s3://ringfleet-checkpoints/jobs/digits-demo/ckpt/000000000999/",
        manifest_sha256="0" * 64,
        size_bytes=1234,
        final=True,
        sent_at=later(4),
    )


def failure(job_id: str, reporter: str, scope: str = "self") -> WorkerFailed:
    return WorkerFailed(
        job_id=job_id,
        instance_id=reporter,
        generation=1,
        rank=0,
        step=42,
        reason="boom",
        scope=scope,  # type: ignore[arg-type]
        sent_at=later(4),
    )


def test_the_check_names_each_reason_a_reporter_is_refused() -> None:
    job, nodes = running_job(members=2)
    by_id = {n.instance_id: n for n in nodes}
    me = instance(1)
    assert reporter_refusal(job, by_id[me], me, 1, member=True) is None
    assert "not a node of job digits-demo" in str(reporter_refusal(job, None, instance(9), 1, member=True))
    foreign = replace(by_id[me], job_id="other-job")
    assert "not a node of job" in str(reporter_refusal(job, foreign, me, 1, member=False))
    lost = replace(by_id[me], state=NodeState.LOST)
    assert "lost node" in str(reporter_refusal(job, lost, me, 1, member=False))
    assert "ahead of job" in str(reporter_refusal(job, by_id[me], me, 2, member=False))
    # a placed node (a joining replacement) may report its failure, not a checkpoint
    spare = replace(by_id[me], state=NodeState.PLACED)
    outsider = replace(job, members={instance(2): 0})
    assert reporter_refusal(outsider, spare, me, 1, member=False) is None
    assert "not a member" in str(reporter_refusal(outsider, spare, me, 1, member=True))


def test_a_worker_of_another_job_cannot_end_a_job_with_a_final_checkpoint(caplog: pytest.LogCaptureFixture) -> None:
    w = two_jobs()
    # a worker of other-job sends a final checkpoint naming digits-demo (its own instance id, or a made-up one)
    for reporter in (instance(11), instance(99)):
        outcome = w.service.on_checkpoint_completed(final_checkpoint("digits-demo", reporter))
        assert outcome.outcome.startswith("ignored: instance") and "not a node of job digits-demo" in outcome.outcome
    assert "refused CheckpointCompleted of job digits-demo" in caplog.text
    job = w.jobs.get("digits-demo")
    assert job is not None and job.state is JobState.RUNNING and w.events == [] and w.publisher.published == []
    # while a member's final checkpoint ends it
    done = w.service.on_checkpoint_completed(final_checkpoint("digits-demo", instance(1)))
    assert done.outcome.startswith("finished")
    job = w.jobs.get("digits-demo")
    assert job is not None and job.state is JobState.SUCCEEDED


def test_a_lost_member_or_a_future_generation_cannot_end_the_job() -> None:
    w = two_jobs()
    lost = w.nodes.get(instance(3))
    assert lost is not None
    w.nodes.put(replace(lost, state=NodeState.LOST))
    assert "lost node" in w.service.on_checkpoint_completed(final_checkpoint("digits-demo", instance(3))).outcome
    ahead = w.service.on_checkpoint_completed(final_checkpoint("digits-demo", instance(1), generation=7))
    assert "ahead of job" in ahead.outcome
    job = w.jobs.get("digits-demo")
    assert job is not None and job.state is JobState.RUNNING


@pytest.mark.parametrize("scope", ["self", "script", "ring"])
def test_a_worker_of_another_job_cannot_make_a_job_restart(scope: str) -> None:
    w = two_jobs()
    outcome = w.service.on_worker_failed(failure("digits-demo", instance(11), scope))
    assert outcome.outcome == "ignored: instance i-11 is not a node of job digits-demo".replace("i-11", instance(11))
    job = w.jobs.get("digits-demo")
    assert job is not None and job.generation == 1 and job.recovery is None and w.publisher.published == []


def test_a_heartbeat_naming_another_job_keeps_no_node_alive() -> None:
    w = two_jobs()
    beat = Heartbeat(
        job_id="digits-demo",
        instance_id=instance(11),
        generation=1,
        rank=0,
        world_size=3,
        step=5,
        samples_per_second=1.0,
        sent_at=later(4),
    )
    assert w.service.on_heartbeat(beat).outcome.startswith("ignored: not a live node of this job")
    node = w.nodes.get(instance(11))
    assert node is not None and node.last_step != 5
