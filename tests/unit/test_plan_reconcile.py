"""plan_reconcile and plan_assignments: what one run of the fleet scaler does to the fleet and to the jobs, decided
from what it read (pure: no tables, no fleet)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import pytest

from ringfleet.contracts import Reconfigure
from ringfleet.core.jobs import Incident, Job, JobState, PendingRecovery
from ringfleet.core.nodes import Node, NodeState, release_idle
from ringfleet.scaling.decisions import FleetState, Pool, ScalingPolicy, pool_key
from ringfleet.scaling.ports import FleetInstance, FleetSnapshot
from ringfleet.scaling.reconcile import RETIRE_GRACE, Handover, ReconcilePlan, plan_assignments, plan_reconcile
from tests.builders import T0, instance, running_job

pytestmark = pytest.mark.unit

NOW = T0 + timedelta(hours=1)
A = pool_key("spot", "g5.xlarge", "us-east-1a")
B = pool_key("spot", "g5.xlarge", "us-east-1b")
POOLS = [
    Pool("g5.xlarge", "us-east-1a", "spot", 0.30, 0.05, 1),
    Pool("g5.xlarge", "us-east-1b", "spot", 0.32, 0.05, 1),
    Pool("g5.xlarge", "us-east-1a", "on-demand", 1.006, 0.0, 1),
]


def fleet(*instances: FleetInstance) -> FleetSnapshot:
    """The fleet as EC2 reports it: every pool's target at what it runs."""
    counts: dict[str, int] = {}
    for i in instances:
        counts[i.pool] = counts.get(i.pool, 0) + 1
    return FleetSnapshot(targets=dict(counts), fulfilled=dict(counts), instances=instances)


def vm(n: int, pool: str = A, state: str = "running") -> FleetInstance:
    return FleetInstance(instance(n), "g5.xlarge", pool, state, host=f"10.0.0.{n}")


def pending_job(job_id: str = "digits", workers: int = 2) -> Job:
    job, _ = running_job(job_id, members=0, generation=0, min_workers=workers, max_workers=workers)
    return replace(job, state=JobState.PENDING, members={})


def plan(
    snapshot: FleetSnapshot,
    jobs: list[Job],
    nodes: Sequence[Node] = (),
    remembered: FleetState | None = None,
) -> ReconcilePlan:
    return plan_reconcile(
        snapshot=snapshot,
        jobs=jobs,
        nodes={n.instance_id: n for n in nodes},
        pools=POOLS,
        remembered=remembered if remembered is not None else FleetState(targets=dict(snapshot.targets)),
        now=NOW,
        policy=ScalingPolicy(),
    )


def test_a_pending_job_whose_instances_run_is_started_with_a_reconfigure_naming_them() -> None:
    # given a PENDING job of two workers, and two running instances: one never placed, one left by a finished job
    # whose agent confirmed it runs nothing of it any more
    job = pending_job()
    snapshot = fleet(vm(1, A), vm(2, B))
    finished_jobs_node = Node(instance(2), "finished-job", state=NodeState.LOST)
    # when the scaler plans
    fleet_plan = plan(snapshot, [job], [finished_jobs_node])
    # then the fleet already holds what the job wants: nothing launched, nothing released
    assert not fleet_plan.changes_fleet and fleet_plan.release == ()
    assert fleet_plan.decision.allotted == {"digits": 2}
    # and the job starts on both instances: its workers get a Reconfigure of generation 1 naming their ranks
    work = plan_assignments(fleet_plan, snapshot)
    (start,) = work.starts
    command = start.start.command
    assert isinstance(command, Reconfigure)
    assert command.job_id == "digits" and command.generation == 1 and command.world_size == 2
    assert set(command.ranks) == {instance(1), instance(2)}
    # the instances' nodes now name the job, and the job as saved carries the command in its outbox
    assert {n.instance_id: n.job_id for n in start.nodes} == {instance(1): "digits", instance(2): "digits"}
    assert start.saved.revision == job.revision + 1 and start.saved.outbox
    # and once its start is saved, no worker is pending any more
    report = work.report(started=["digits"])
    assert report.started == ("digits",) and report.pending_workers == 0


@pytest.mark.parametrize("left", [NodeState.RELEASED, NodeState.ACTIVE], ids=["released", "cancelled-job-member"])
def test_an_instance_of_an_ended_job_is_placed_only_once_its_agent_confirmed_it_idle(left: NodeState) -> None:
    # given a PENDING job of two workers, and two running instances: one never placed, one its ended job released
    # (or a member of a cancelled job, whose node recovery never touched) whose agent has not said InstanceIdle yet
    job = pending_job()
    snapshot = fleet(vm(1, A), vm(2, B))
    ended = Node(instance(2), "ended-job", state=left)
    # when the scaler plans
    fleet_plan = plan(snapshot, [job], [ended])
    # then the job is not started: only one instance is free (the ended job may still be training on the other)
    work = plan_assignments(fleet_plan, snapshot)
    assert not work.starts and instance(2) in fleet_plan.unconfirmed
    # and once the agent confirmed (the node freed), the job starts on both
    freed = release_idle(ended, None, NOW)
    assert freed is not None and freed.state is NodeState.LOST
    (start,) = plan_assignments(plan(snapshot, [job], [freed]), snapshot).starts
    assert set(start.start.command.ranks) == {instance(1), instance(2)}


def test_the_last_worker_moved_back_to_spot_keeps_its_instance_through_the_grace_and_is_then_released() -> None:
    # given a job whose move back to spot just completed: its last on-demand worker was left out of the ring two
    # seconds ago (it trains on to its next step boundary) and its retirement is over; and a pending job of one worker
    on_demand = pool_key("on-demand", "g5.xlarge", "us-east-1a")
    moved, _ = running_job("moved", members=1, first=2, min_workers=1, max_workers=1)
    left_out = Incident(NOW - timedelta(seconds=2), "move-back-completed", moved.generation, instance(1))
    moved = moved.with_incident(left_out)
    assert moved.retirement is None
    waiting = pending_job("waiting", workers=1)
    retiree = Node(instance(1), "moved", state=NodeState.LOST, updated_at=NOW - timedelta(minutes=5))
    nodes = [retiree, Node(instance(2), "moved", state=NodeState.ACTIVE, rank=0)]
    snapshot = fleet(FleetInstance(instance(1), "g5.xlarge", on_demand, "running", host="10.0.0.1"), vm(2, B))
    # when the scaler plans within the grace
    held = plan(snapshot, [moved, waiting], nodes)
    # then the retiree's instance is neither released under its worker nor handed to the other job
    assert instance(1) in held.held and instance(1) not in held.release
    assert not plan_assignments(held, snapshot).starts
    # and once the grace is over it is released, whatever its pool's target
    later = plan_reconcile(
        snapshot=snapshot,
        jobs=[moved, waiting],
        nodes={n.instance_id: n for n in nodes},
        pools=POOLS,
        remembered=FleetState(targets=dict(snapshot.targets)),
        now=left_out.at + RETIRE_GRACE,
        policy=ScalingPolicy(),
    )
    assert instance(1) in later.release


def test_a_job_that_moved_before_its_start_was_saved_is_reported_as_still_pending() -> None:
    job = pending_job()
    snapshot = fleet(vm(1, A), vm(2, B))
    work = plan_assignments(plan(snapshot, [job]), snapshot)
    # the start was planned, but the job's save lost (it was cancelled meanwhile): it is not reported started
    report = work.report(started=[])
    assert report.started == () and report.pending_workers == 2


def test_instances_still_booting_or_serving_a_forming_ring_are_not_placed() -> None:
    # an instance still launching does not count: one running instance is not enough for a two-worker job
    job = pending_job()
    booting = fleet(vm(1, A), vm(2, B, state="pending"))
    assert plan_assignments(plan(booting, [job]), booting).starts == ()
    # and a PROVISIONING job (its ring is forming) is given nothing more
    forming = replace(pending_job("forming", workers=1), state=JobState.PROVISIONING)
    idle = fleet(vm(3, A))
    work = plan_assignments(plan(idle, [forming]), idle)
    assert work.starts == () and work.handovers == ()


def test_an_idle_instance_of_a_shrinking_pool_is_released_and_a_busy_one_never() -> None:
    # given a job of one worker that two instances serve (it was bigger before), and one idle instance, all in
    # pool A, whose surplus has lasted past the idle timeout and the cooldown
    job, _ = running_job("small", members=2, min_workers=1, max_workers=1)
    nodes = [Node(instance(n), "small", state=NodeState.ACTIVE, rank=n - 1) for n in (1, 2)]
    snapshot = fleet(vm(1, A), vm(2, A), vm(3, A))
    long_ago = NOW - timedelta(hours=1)
    remembered = FleetState(targets={A: 3}, last_scaled_at=long_ago, surplus_since=long_ago)
    # when the scaler plans
    fleet_plan = plan(snapshot, [job], nodes, remembered)
    # then pool A shrinks to the one worker the job wants, and only the idle instance is terminated: the pool stays
    # above its target rather than take a busy worker
    assert fleet_plan.targets == {A: 1}
    assert fleet_plan.release == (instance(3),)
    assert fleet_plan.changes_fleet


def test_a_young_surplus_is_held_for_a_job_that_may_come_back_for_it() -> None:
    # the same fleet, but its surplus starts now: nothing is released yet, and the surplus's start is remembered
    job, _ = running_job("small", members=1, min_workers=1, max_workers=1)
    snapshot = fleet(vm(1, A), vm(2, A), vm(3, A))
    fleet_plan = plan(snapshot, [job], [Node(instance(1), "small", state=NodeState.ACTIVE, rank=0)])
    assert fleet_plan.release == () and not fleet_plan.changes_fleet
    assert fleet_plan.targets == {A: 3}
    assert fleet_plan.state.surplus_since == NOW


def test_a_leaving_instances_job_gets_its_replacement_launched_now_and_handed_over_once_it_runs() -> None:
    # given a two-worker job recovering from an interruption notice on one of its instances, both in pool A
    job, _ = running_job("ring", members=2, min_workers=2, max_workers=2)
    job = replace(job, state=JobState.RECOVERING, replacements_wanted=1)
    nodes = [
        Node(instance(1), "ring", state=NodeState.ACTIVE, rank=0),
        Node(instance(2), "ring", state=NodeState.LEAVING, rank=1, last_step=400),
    ]
    snapshot = fleet(vm(1, A), vm(2, A))
    # when the scaler plans
    fleet_plan = plan(snapshot, [job], nodes)
    # then the leaving instance is not capacity: a replacement launches now, in the other spot pool, while the leaving
    # one keeps running (its pool's target counts it) to finish its emergency checkpoint; nothing is released
    assert fleet_plan.decision.targets == {A: 1, B: 1}
    assert fleet_plan.targets == {A: 2, B: 1}
    assert fleet_plan.release == () and fleet_plan.rereads_fleet
    # and its interruption is counted against pool A once, however many runs see the notice
    assert fleet_plan.state.pool_interruptions == {A: 1} and instance(2) in fleet_plan.state.noticed
    again = plan(snapshot, [job], nodes, remembered=fleet_plan.state)
    assert again.state.pool_interruptions == {A: 1}
    # when the replacement runs (the fleet read again after the targets were set)
    launched = fleet(vm(1, A), vm(2, A), vm(3, B))
    work = plan_assignments(fleet_plan, launched)
    # then it is handed to the job (its node PLACED on it), and the leaving instance is not
    assert work.handovers == (
        Handover("ring", Node(instance(3), "ring", state=NodeState.PLACED, host="10.0.0.3", tenant="acme")),
    )
    assert work.report(started=[]).replacements == (("ring", instance(3)),)


def test_instances_placed_by_the_scaler_bring_their_types_gpus_as_slots_to_their_nodes_and_the_ring() -> None:
    # given the catalog's four-GPU type on offer beside the one-GPU one (the pools carry the catalog's GPUs)
    multi = pool_key("spot", "g5.12xlarge", "us-east-1a")
    pools = [*POOLS, Pool("g5.12xlarge", "us-east-1a", "spot", 1.8, 0.05, 4)]
    job = pending_job()
    job = replace(job, spec=job.spec.model_copy(update={"instance_types": ["g5.xlarge", "g5.12xlarge"]}))
    big = FleetInstance(instance(2), "g5.12xlarge", multi, "running", host="10.0.0.2")
    snapshot = fleet(vm(1, A), big)
    # when the scaler plans and places the PENDING job on a one-GPU and a four-GPU instance
    fleet_plan = plan_reconcile(
        snapshot=snapshot,
        jobs=[job],
        nodes={},
        pools=pools,
        remembered=FleetState(targets=dict(snapshot.targets)),
        now=NOW,
        policy=ScalingPolicy(),
    )
    (start,) = plan_assignments(fleet_plan, snapshot).starts
    # then the four-GPU member runs 4 slots, and both nodes record their instance's slots for recovery
    assert start.start.command.slots == {instance(2): 4}
    assert {n.instance_id: n.slots for n in start.nodes} == {instance(1): 1, instance(2): 4}
    # and a four-GPU instance handed to a running job brings its slots to its node, which recovery is told
    running, _ = running_job("ring", members=1, min_workers=1, max_workers=2, first=5)
    running = replace(running, spec=job.spec.model_copy(update={"job_id": "ring"}))
    (handover,) = plan_assignments(replace(fleet_plan, jobs=(running,)), fleet(big)).handovers
    assert handover.node == Node(instance(2), "ring", state=NodeState.PLACED, host="10.0.0.2", slots=4, tenant="acme")


def test_a_lost_member_that_still_runs_is_released_and_replaced_not_counted_as_the_jobs_capacity() -> None:
    # given a job of two workers waiting below min_workers for a replacement: its second member was reported lost
    # (a slot process died on it) but its instance still runs, and its node still names the job
    job, nodes = running_job("slots", members=2, min_workers=2, max_workers=2)
    job = replace(
        job,
        state=JobState.RECOVERING,
        recovery=PendingRecovery("worker-failed", NOW, leaving=(), lost=(instance(2),)),
        replacements_wanted=1,
    )
    snapshot = fleet(vm(1, A), vm(2, B))
    # when the scaler plans
    fleet_plan = plan(snapshot, [job], nodes)
    # then the lost instance is released while the pools' targets still ask for the job's two workers: the fleet
    # launches a fresh instance in its place (before, it counted as the job's and nothing was ever launched)
    assert instance(2) in fleet_plan.release and instance(2) not in fleet_plan.busy
    assert sum(fleet_plan.targets.values()) == 2


def test_an_instance_serves_the_tenant_it_served_and_no_other() -> None:
    # given an instance whose job of tenant acme ended (its agent confirmed it idle), and a pending job of globex
    served = Node(instance(1), "acme-old", state=NodeState.LOST, tenant="acme")
    globex = replace(pending_job("globex-job", workers=1), tenant="globex")
    snapshot = fleet(vm(1, A))
    # when the scaler plans
    fleet_plan = plan(snapshot, [globex], [served])
    # then globex's job is not placed on it: it is released, and the pool still asks for globex's worker (a fresh
    # instance is launched for it)
    assert instance(1) in fleet_plan.release
    assert not plan_assignments(fleet_plan, fleet(vm(1, A))).starts
    assert sum(fleet_plan.targets.values()) == 1
    # and when acme's next job is pending instead, it runs there, the instance still acme's
    acme = pending_job("acme-next", workers=1)
    assert acme.tenant == "acme"
    reused = plan(snapshot, [acme], [served])
    assert instance(1) not in reused.release
    (start,) = plan_assignments(reused, snapshot).starts
    assert [n.tenant for n in start.nodes] == ["acme"] and set(start.start.command.ranks) == {instance(1)}
