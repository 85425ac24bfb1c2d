"""A job's own script failing (WorkerFailed scope ``script``): the same members run it again in a new generation, at
most ``max_restarts`` times, counted once per generation; then the job ends FAILED, its workers are stopped, the
fleet scaler is told, and the reason stays on the job for ``ringfleet status``."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from ringfleet.contracts import CheckpointCompleted, Program, Reconfigure, Stop, WorkerFailed
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.nodes import NodeState
from ringfleet.recovery.decisions import plan_recovery
from ringfleet.recovery.plan import CapacityArrived, NodeLost, NoticeGiven, ScriptFailed
from tests.builders import RecoveryWorld, instance, later, running_job

pytestmark = pytest.mark.unit

TRACEBACK = (
    "entrypoint 'python train.py' exited with status 1\n"
    "Traceback (most recent call last):\n"
    '  File "train.py", line 12, in <module>\n'
    "    loss = model(batch)\n"
    "ValueError: shapes (64,10) and (8,) do not match"
)


class Clock:
    def now(self) -> Any:
        return later(5)


def world(*, max_restarts: int = 3, members: int = 3) -> RecoveryWorld:
    return RecoveryWorld.of(Clock(), members=members, max_workers=members, max_restarts=max_restarts)


def job_of(w: RecoveryWorld) -> Job:
    job = w.jobs.get("digits-demo")
    assert job is not None
    return job


def script_failed(reporter: str, generation: int, *, rank: int = 0, reason: str = TRACEBACK) -> WorkerFailed:
    return WorkerFailed(
        job_id="digits-demo",
        instance_id=reporter,
        generation=generation,
        rank=rank,
        step=17,
        reason=reason,
        scope="script",
        sent_at=later(4),
    )


def reconfigures(w: RecoveryWorld) -> list[Reconfigure]:
    return [c for c in w.publisher.published if isinstance(c, Reconfigure)]


def finished_events(w: RecoveryWorld) -> list[tuple[str, str]]:
    return [(e["DetailType"], json.loads(e["Detail"])["state"]) for e in w.events if e["DetailType"] == "Job Finished"]


# -- restarts -------------------------------------------------------------------------------------------------------


def test_a_failed_script_runs_again_on_the_same_members_in_a_new_generation() -> None:
    # given a job of three running at generation 1
    w = world()
    # when rank 1's script raises
    outcome = w.service.on_worker_failed(script_failed(instance(2), 1, rank=1))
    # then one Reconfigure at generation 2 keeps every member at its rank, restores nothing (agents re-run the
    # script and sync their state) and says what to run
    (command,) = reconfigures(w)
    job = job_of(w)
    assert (command.generation, command.ranks) == (2, {instance(1): 0, instance(2): 1, instance(3): 2})
    assert command.checkpoint is None
    assert command.program == Program.of(job.spec)
    assert job.state is JobState.RUNNING and job.generation == 2 and job.script_failures == 1
    # and the job's event log says the script failed, with its traceback's tail, then that it was restarted
    failed, restarted = job.incidents[-2:]
    assert (failed.cause, failed.instance_id, failed.generation) == ("script-failed", instance(2), 1)
    assert failed.detail.endswith("ValueError: shapes (64,10) and (8,) do not match")
    assert "failure 1 (max_restarts 3)" in failed.detail
    assert (restarted.cause, restarted.generation) == ("script-restarted", 2)
    # and nothing about the fleet changes: no capacity is wanted, no instance is lost
    assert w.events == []
    assert {n.state for n in w.nodes.list_by_job("digits-demo")} == {NodeState.ACTIVE}
    assert outcome.metrics == {"ScriptFailures": 1.0}


def test_every_rank_reporting_the_same_failure_twice_counts_once() -> None:
    # given a job of three whose script fails on every rank at once (the same bug everywhere)
    w = world()
    reports = [script_failed(instance(n), 1, rank=n - 1) for n in (1, 2, 3)]
    # when each rank reports it, and the broker delivers every report twice
    for report in [*reports, *reports]:
        w.service.on_worker_failed(report)
    # then the job restarted once and counted one failure
    assert [c.generation for c in reconfigures(w)] == [2]
    assert job_of(w).script_failures == 1
    assert [i.cause for i in job_of(w).incidents].count("script-failed") == 1


def test_a_late_report_of_an_older_generation_counts_nothing() -> None:
    # given a job whose script failed once and was restarted at generation 2
    w = world()
    w.service.on_worker_failed(script_failed(instance(1), 1))
    w.publisher.published.clear()
    # when a report of generation 1 arrives late, from another rank
    outcome = w.service.on_worker_failed(script_failed(instance(3), 1, rank=2))
    # then nothing is sent and nothing counted
    assert w.publisher.published == [] and job_of(w).script_failures == 1
    assert "ignored" in outcome.outcome


def test_a_lost_node_never_counts_against_max_restarts() -> None:
    # given a job allowed no script failure at all
    job, nodes = running_job(members=3, max_workers=3, max_restarts=0)
    # when a member is lost without notice and the ring re-forms
    plan = plan_recovery(job, nodes, NodeLost(instance(2), "worker-failed", later(1), generation=1))
    # then the job runs on, its script failures untouched, and the new ring's Reconfigure says what to run
    (command,) = plan.commands
    assert isinstance(command, Reconfigure) and command.program == Program.of(job.spec)
    assert plan.job.state is JobState.RUNNING and plan.job.script_failures == 0


def test_a_script_failure_during_a_notice_stops_waiting_for_the_emergency_checkpoint() -> None:
    # given a job of three whose member 3 got a spot warning: it waits for the emergency checkpoint and a replacement
    job, nodes = running_job(members=3, max_workers=3)
    job = plan_recovery(job, nodes, NoticeGiven(instance(3), "spot-interruption", later(1))).job
    assert job.recovery is not None and job.recovery.awaiting_checkpoint
    # when the script fails on a member meanwhile (twice: two ranks report it)
    failed = ScriptFailed(instance(1), 1, later(2), TRACEBACK)
    plan = plan_recovery(job, nodes, failed)
    again = plan_recovery(plan.job, nodes, replace(failed, instance_id=instance(2)))
    # then the failure is counted once and the recovery no longer waits for a checkpoint the script will not take
    assert plan.job.script_failures == 1 and not again.changed
    assert plan.job.recovery is not None and not plan.job.recovery.awaiting_checkpoint
    assert plan.commands == () and plan.job.state is JobState.RECOVERING
    # and once the replacement arrives, the ring re-forms with it: the agents run the script again
    reformed = plan_recovery(plan.job, nodes, CapacityArrived(instance(50), later(30), host="10.0.0.50"))
    (command,) = reformed.commands
    assert isinstance(command, Reconfigure) and command.generation == 2
    assert set(command.ranks) == {instance(1), instance(2), instance(50)}


# -- giving up ------------------------------------------------------------------------------------------------------


def test_past_max_restarts_the_job_fails_its_workers_stop_and_the_fleet_is_freed() -> None:
    # given a job that may restart its script once
    w = world(max_restarts=1)
    # when its script fails at generation 1 (restarted) and again at generation 2
    w.service.on_worker_failed(script_failed(instance(1), 1))
    outcome = w.service.on_worker_failed(script_failed(instance(2), 2, rank=1))
    # then the job ends FAILED at generation 2 with the script's reason kept on the record
    job = job_of(w)
    assert job.state is JobState.FAILED and job.generation == 2 and job.script_failures == 2
    assert job.failure == TRACEBACK
    assert job.incidents[-1].cause == "failed" and "max_restarts 1" in job.incidents[-1].detail
    assert "job failed" in outcome.outcome
    # and its workers are told to stop, at the generation they run
    stops = [c for c in w.publisher.published if isinstance(c, Stop)]
    assert [(s.generation, s.job_id) for s in stops] == [(2, "digits-demo")]
    assert "failed" in stops[0].reason
    # and the fleet scaler hears the job finished FAILED, and the job's nodes no longer hold instances (released:
    # free once their agents confirm the script is gone)
    assert finished_events(w) == [("Job Finished", "FAILED")]
    assert {n.state for n in w.nodes.list_by_job("digits-demo")} == {NodeState.RELEASED}


def test_the_last_failure_reported_again_changes_nothing_more() -> None:
    # given a job that failed for good
    w = world(max_restarts=0)
    final = script_failed(instance(1), 1)
    w.service.on_worker_failed(final)
    published, events = list(w.publisher.published), list(w.events)
    # when the same report comes again, and another rank's report of it
    w.service.on_worker_failed(final)
    w.service.on_worker_failed(script_failed(instance(3), 1, rank=2))
    # then no second Stop and no second Job Finished
    assert w.publisher.published == published and w.events == events
    assert [type(c).__name__ for c in published] == ["Stop"]
    assert finished_events(w) == [("Job Finished", "FAILED")]
    assert job_of(w).script_failures == 1


def test_a_job_that_succeeds_is_announced_as_succeeded() -> None:
    # the announcement carries the job's own final state (regression: it was always SUCCEEDED)
    w = world()
    w.service.on_checkpoint_completed(
        CheckpointCompleted(
            job_id="digits-demo",
            instance_id=instance(1),
            generation=1,
            step=240,
            uri="s3://ringfleet-checkpoints/jobs/digits-demo/ckpt/000000000240/",
            manifest_sha256="0" * 64,
            size_bytes=1234,
            final=True,
        )
    )
    assert finished_events(w) == [("Job Finished", "SUCCEEDED")]


def test_a_script_failure_from_an_instance_of_another_job_is_ignored() -> None:
    w = world()
    outcome = w.service.on_worker_failed(script_failed(instance(99), 1))
    assert "ignored" in outcome.outcome and w.publisher.published == []
    assert job_of(w).script_failures == 0
