"""Replacing a running job's members one at a time (rolling upgrade, move back to spot) — the pure decisions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ringfleet.contracts import Reconfigure
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.nodes import Node, NodeState, plan_node_updates
from ringfleet.core.retirement import RetirementRefused, begin_upgrade, retired_at
from ringfleet.recovery.decisions import plan_recovery
from ringfleet.recovery.plan import CapacityArrived, CheckpointTaken, RetireRequested, ScriptFailed
from ringfleet.scaling.decisions import FleetState, Pool, ScalingPolicy, pool_key
from ringfleet.scaling.ports import FleetInstance, FleetSnapshot
from ringfleet.scaling.reconcile import plan_reconcile
from tests.builders import T0, instance, later, running_job

pytestmark = pytest.mark.unit

NEW = ("python", "examples/digits/train_v2.py")


def _upgrading(members: int = 2, min_workers: int = 2) -> tuple[Job, list[Node]]:
    job, nodes = running_job(members=members, min_workers=min_workers, max_workers=members)
    return begin_upgrade(job, "acme/digits:2", NEW, later(1)), nodes


def _reconfigure(plan_commands: tuple[object, ...]) -> Reconfigure:
    (command,) = plan_commands
    assert isinstance(command, Reconfigure)
    return command


def test_an_upgrade_replaces_every_worker_one_at_a_time_growing_before_each_shrink() -> None:
    # given a RUNNING job of two (min 2, max 2) whose upgrade just started
    job, nodes = _upgrading()
    old = list(job.members)
    assert job.instances_wanted == 1, "one instance beyond max_workers is wanted for the first replacement"
    seen = []
    for n, new in enumerate((instance(50), instance(51))):
        # when a replacement arrives, the ring grows to three with it, and the new version is what it is told to run
        grown = plan_recovery(job, nodes, CapacityArrived(new, later(10 + n), host="10.0.0.50"))
        command = _reconfigure(grown.commands)
        assert command.world_size == 3 and command.checkpoint is None, "a grow: the joiner gets the state by broadcast"
        assert command.program is not None and tuple(command.program.entrypoint) == NEW
        job = grown.job
        assert job.instances_wanted == 0, "one replacement at a time"
        # and a checkpoint of an older ring (the joiner not yet ready) retires nobody
        assert not plan_recovery(job, nodes, CheckpointTaken(job.generation - 1, 10, later(20))).changed
        # when the ring that includes it checkpoints, one old worker is left out: back to two, never below min
        shrunk = plan_recovery(job, nodes, CheckpointTaken(job.generation, 100 * (n + 1), later(30 + n)))
        command = _reconfigure(shrunk.commands)
        assert command.world_size == 2 and new in command.ranks
        (left,) = set(job.members) - set(command.ranks)
        seen.append(left)
        job = shrunk.job
        assert left in retired_at(job), "a retiree is held, then released, never handed back as a replacement"
        # and the old worker's node is let go (LOST: the scaler frees its instance)
        updates, _ = plan_node_updates(job, nodes, later(40))
        assert any(u.instance_id == left and u.state is NodeState.LOST for u in updates)
        nodes = [*nodes, Node(new, job.job_id, state=NodeState.ACTIVE, host="10.0.0.50")]
    # then every old worker was retired, once each, and the job runs on the new version only, RUNNING all along
    assert sorted(seen) == sorted(old)
    assert set(job.members) == {instance(50), instance(51)}
    assert job.retirement is None and job.state is JobState.RUNNING and job.instances_wanted == 0
    causes = [i.cause for i in job.incidents]
    assert causes.count("upgrade-started") == 1 and causes.count("upgrade-progressed") == 1
    assert causes[-1] == "upgrade-completed"


def test_a_new_version_that_fails_rolls_the_upgrade_back_and_the_old_workers_run_on() -> None:
    # given an upgrade whose first replacement joined the ring
    job, nodes = _upgrading(members=3, min_workers=1)
    previous = job.retirement.previous_image if job.retirement else None
    job = plan_recovery(job, nodes, CapacityArrived(instance(50), later(10))).job
    old = [i for i in job.members if i != instance(50)]
    # when the new version's script fails (it cannot restore the checkpoint)
    failed = plan_recovery(
        job, nodes, ScriptFailed(instance(50), job.generation, later(20), "KeyError: 'layer.weight' in restore")
    )
    # then the ring goes on with the old workers only (state kept in memory), the job's program is the old one again,
    # the failure does not count against max_restarts, and the rollback names its cause
    command = _reconfigure(failed.commands)
    assert set(command.ranks) == set(old) and command.checkpoint is None
    assert command.program is not None and command.program.image != "acme/digits:2"
    after = failed.job
    assert after.state is JobState.RUNNING and after.retirement is None and after.script_failures == 0
    assert after.spec.image == previous != "acme/digits:2"
    assert after.incidents[-1].cause == "upgrade-rolled-back" and "layer.weight" in after.incidents[-1].detail
    assert after.instances_wanted == 0, "no further replacement is wanted"


def test_an_upgrade_is_refused_for_a_job_not_running_or_already_upgrading() -> None:
    job, _ = running_job()
    upgrading = begin_upgrade(job, "acme/digits:2", NEW, later(1))
    with pytest.raises(RetirementRefused, match="already replacing"):
        begin_upgrade(upgrading, "acme/digits:3", NEW, later(2))
    with pytest.raises(RetirementRefused, match="RECOVERING"):
        begin_upgrade(replace(job, state=JobState.RECOVERING), "acme/digits:2", NEW, later(1))
    with pytest.raises(RetirementRefused, match="nothing to upgrade"):
        begin_upgrade(job, job.spec.image, tuple(job.spec.entrypoint), later(1))


def test_an_on_demand_member_is_marked_to_retire_when_a_spot_pool_has_room() -> None:
    # given a job of two (max 2) running on one spot and one on-demand instance, and spot pools with room
    spot, on_demand = pool_key("spot", "g5.xlarge", "us-east-1a"), pool_key("on-demand", "g5.xlarge", "us-east-1a")
    pools = [
        Pool("g5.xlarge", "us-east-1a", "spot", 0.30, 0.05, 1),
        Pool("g5.xlarge", "us-east-1b", "spot", 0.32, 0.05, 1),
        Pool("g5.xlarge", "us-east-1a", "on-demand", 1.006, 0.0, 1),
    ]
    job, _ = running_job("ring", members=2, min_workers=2, max_workers=2)
    nodes = {i: Node(i, "ring", state=NodeState.ACTIVE, rank=r) for i, r in job.members.items()}
    instances = (
        FleetInstance(instance(1), "g5.xlarge", spot, "running"),
        FleetInstance(instance(2), "g5.xlarge", on_demand, "running"),
    )
    snapshot = FleetSnapshot(targets={spot: 1, on_demand: 1}, fulfilled={spot: 1, on_demand: 1}, instances=instances)

    def reconcile(j: Job) -> tuple[tuple[str, str], ...]:
        return plan_reconcile(
            snapshot=snapshot,
            jobs=[j],
            nodes=nodes,
            pools=pools,
            remembered=FleetState(targets=dict(snapshot.targets)),
            now=T0,
            policy=ScalingPolicy(),
        ).retire

    # when the scaler plans, then the on-demand member (not the spot one) is to retire
    assert reconcile(job) == (("ring", instance(2)),)
    marked = plan_recovery(job, [], RetireRequested(instance(2), later(1))).job
    assert marked.retirement is not None and marked.retirement.retiring == (instance(2),)
    assert marked.instances_wanted == 1
    # and a job already retiring, or recovering, gets no second mark
    assert reconcile(marked) == ()
    recovering = replace(job, state=JobState.RECOVERING)
    assert reconcile(recovering) == ()
    assert not plan_recovery(marked, [], RetireRequested(instance(1), later(2))).changed
    # when its spot replacement joined and the ring checkpointed, the on-demand worker leaves
    grown = plan_recovery(marked, [], CapacityArrived(instance(3), later(5))).job
    done = plan_recovery(grown, [], CheckpointTaken(grown.generation, 50, later(9))).job
    assert set(done.members) == {instance(1), instance(3)} and done.retirement is None
    assert done.incidents[-1].cause == "move-back-completed"
