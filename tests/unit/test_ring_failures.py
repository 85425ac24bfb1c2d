"""Which members a worker's failed collective lost, decided from what EC2 reports not running — pure."""

from __future__ import annotations

from typing import Literal

import pytest

from ringfleet.contracts import Reconfigure, WorkerFailed
from ringfleet.core.jobs import Job
from ringfleet.recovery.decisions import plan_recovery
from ringfleet.recovery.plan import NodeLost, RecoveryPlan, ScriptFailed
from ringfleet.recovery.signals import failure_signal, lost_in_ring, ring_suspects
from tests.builders import instance, later, running_job

pytestmark = pytest.mark.unit


def failed(reporter: str, *, generation: int = 1, scope: Literal["self", "ring", "script"] = "ring") -> WorkerFailed:
    return WorkerFailed(
        job_id="digits-demo",
        instance_id=reporter,
        generation=generation,
        rank=0,
        step=42,
        reason="collective failed: Connection closed by peer",
        scope=scope,
        sent_at=later(5),
    )


def applied(job: Job, losses: tuple[NodeLost, ...]) -> list[RecoveryPlan]:
    _, nodes = running_job(members=len(job.members))
    plans = []
    for loss in losses:
        plans.append(plan_recovery(job, nodes, loss))
        job = plans[-1].job
    return plans


def test_a_failed_collective_whose_peers_ec2_still_runs_restarts_nobody() -> None:
    job, _ = running_job(members=3)
    report = failed(instance(1))
    ring = lost_in_ring(job, report, not_running=set())
    assert ring.lost == () and "heartbeat sweep" in ring.outcome


def test_the_peer_ec2_no_longer_runs_is_lost_and_the_survivors_reform_without_it() -> None:
    job, _ = running_job(members=3)
    report = failed(instance(1))
    assert set(ring_suspects(job, report)) == {instance(2), instance(3)}  # EC2 is asked about the peers only
    ring = lost_in_ring(job, report, not_running={instance(2)})
    (loss,) = ring.lost
    assert loss.instance_id == instance(2) and loss.generation == 1 and "step 42" in loss.detail
    (plan,) = applied(job, ring.lost)
    (command,) = plan.commands
    assert isinstance(command, Reconfigure)
    assert command.generation == 2 and command.ranks == {instance(1): 0, instance(3): 1}


def test_two_peers_gone_are_both_lost_in_order_and_the_next_rings_failure_finds_any_it_kept() -> None:
    job, _ = running_job(members=4)
    ring = lost_in_ring(job, failed(instance(1)), not_running={instance(4), instance(2)})
    assert [loss.instance_id for loss in ring.lost] == [instance(2), instance(4)]
    first, second = applied(job, ring.lost)
    # the first loss re-forms the ring at once; the second, reported at the older generation, decides nothing
    assert [type(c) for c in first.commands] == [Reconfigure] and not second.changed
    reformed = first.job
    assert reformed.members == {instance(1): 0, instance(3): 1, instance(4): 2}
    # so that ring's own failed collective reports it again, and EC2 still does not run it
    again = lost_in_ring(reformed, failed(instance(1), generation=2), not_running={instance(4), instance(2)})
    assert [loss.instance_id for loss in again.lost] == [instance(4)]


def test_the_reporter_is_never_the_one_lost_whatever_ec2_says_of_it() -> None:
    job, _ = running_job(members=3)
    # EC2's view can lag: it may not list the reporter running yet, but the reporter just sent its report
    ring = lost_in_ring(job, failed(instance(1)), not_running={instance(1)})
    assert ring.lost == ()


def test_a_report_from_a_ring_already_reformed_asks_ec2_nothing_and_loses_nobody() -> None:
    job, _ = running_job(members=3, generation=2)
    report = failed(instance(1), generation=1)
    assert ring_suspects(job, report) == ()
    ring = lost_in_ring(job, report, not_running={instance(2)})
    assert ring.lost == () and "already re-formed" in ring.outcome


def test_a_workers_report_about_itself_is_its_own_loss_or_its_scripts_failure() -> None:
    lost = failure_signal(failed(instance(2), scope="self"))
    assert isinstance(lost, NodeLost) and lost.instance_id == instance(2) and lost.cause == "worker-failed"
    script = failure_signal(failed(instance(2), scope="script"))
    assert isinstance(script, ScriptFailed) and script.step == 42 and "Connection closed" in script.reason
    with pytest.raises(ValueError, match="lost_in_ring"):
        failure_signal(failed(instance(2)))
