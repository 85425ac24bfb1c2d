"""plan_recovery: notice, no notice, nothing left, rebalance, strangers — and the same signal twice decides nothing."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ringfleet.contracts import CheckpointNow, Reconfigure
from ringfleet.core.commands import rendezvous_port
from ringfleet.core.jobs import DurableCheckpoint, IllegalTransition, JobState
from ringfleet.core.nodes import LifecycleHook, NodeState, plan_node_updates, release_idle
from ringfleet.recovery.decisions import plan_recovery
from ringfleet.recovery.plan import CapacityArrived, CheckpointTaken, NodeLost, NoticeGiven
from tests.builders import instance, later, running_job

pytestmark = pytest.mark.unit


def test_spot_warning_asks_for_a_checkpoint_and_a_replacement_without_changing_the_ring() -> None:
    # given a RUNNING job of four at generation 1
    job, nodes = running_job()
    leaving = instance(3)
    # when the spot warning for one member arrives
    plan = plan_recovery(job, nodes, NoticeGiven(leaving, "spot-interruption", later(1), deadline=later(121)))
    # then the workers are told to checkpoint now at the current generation, and one replacement is wanted
    (command,) = plan.commands
    assert isinstance(command, CheckpointNow)
    assert (command.generation, command.reason, command.deadline) == (1, "spot-interruption", later(121))
    assert plan.job.state is JobState.RECOVERING
    assert plan.job.replacements_wanted == 1
    assert plan.job.generation == 1 and plan.job.members == job.members


def test_notice_reconfigures_once_both_the_checkpoint_and_the_replacement_are_there() -> None:
    # given a warning was handled and its emergency checkpoint completed
    job, nodes = running_job()
    leaving, spare = instance(2), instance(50)
    job = plan_recovery(job, nodes, NoticeGiven(leaving, "spot-interruption", later(1))).job
    job = plan_recovery(job, nodes, CheckpointTaken(1, 120, later(20), emergency=True)).job
    assert job.generation == 1, "no replacement yet: the ring stays as it is"
    # when the replacement capacity arrives
    plan = plan_recovery(job, nodes, CapacityArrived(spare, later(60), host="10.0.0.50"))
    # then one Reconfigure at generation 2 swaps the leaving node for the replacement, keeping in-memory state
    (command,) = plan.commands
    assert isinstance(command, Reconfigure)
    assert command.generation == 2 and command.checkpoint is None
    assert set(command.ranks) == (set(job.members) - {leaving}) | {spare}
    assert command.rendezvous == f"10.0.0.1:{rendezvous_port(plan.job)}", "rank 0 kept its rank, serves the rendezvous"
    assert rendezvous_port(plan.job) != rendezvous_port(job), "never the port of the ring still closing"
    assert plan.job.state is JobState.RUNNING and plan.job.recovery is None
    assert plan.metrics["StepsLost"] == 0


def test_capacity_for_a_ring_below_max_workers_grows_it_without_a_recovery() -> None:
    # given a job of 3 (max 3) whose survivors re-formed as 2 after a loss without notice
    job, nodes = running_job(members=3, max_workers=3)
    job = plan_recovery(job, nodes, NodeLost(instance(2), "worker-failed", later(1))).job
    assert (job.generation, job.world_size, job.recovery) == (2, 2, None)
    # when a replacement instance arrives
    plan = plan_recovery(job, nodes, CapacityArrived(instance(50), later(9), host="10.0.0.50"))
    # then the ring grows back to 3 at generation 3: survivors keep their order, the newcomer joins last
    (command,) = plan.commands
    assert isinstance(command, Reconfigure)
    assert command.generation == 3 and command.checkpoint is None
    assert command.ranks == {instance(1): 0, instance(3): 1, instance(50): 2}
    assert plan.job.spares == () and plan.job.incidents[-1].cause == "grown"
    # and a full ring keeps further capacity as a spare
    full = plan_recovery(plan.job, nodes, CapacityArrived(instance(51), later(10)))
    assert full.commands == () and full.job.spares == (instance(51),)


def test_replacement_before_checkpoint_waits_for_the_checkpoint() -> None:
    job, nodes = running_job()
    job = plan_recovery(job, nodes, NoticeGiven(instance(2), "spot-interruption", later(1))).job
    # when the replacement comes first
    plan = plan_recovery(job, nodes, CapacityArrived(instance(50), later(5)))
    # then nothing is reconfigured until the checkpoint is there
    assert plan.commands == () and plan.job.spares == (instance(50),)
    plan = plan_recovery(plan.job, nodes, CheckpointTaken(1, 120, later(20), emergency=True))
    assert [c.type for c in plan.commands] == ["Reconfigure"]


def test_termination_without_notice_reconfigures_the_survivors_at_once() -> None:
    job, nodes = running_job()
    lost = instance(1)  # rank 0
    # when a member terminates without notice
    plan = plan_recovery(job, nodes, NodeLost(lost, "instance-stopped", later(3)))
    # then the three survivors re-form at generation 2, ranks 0..2 in their old order, from memory
    (command,) = plan.commands
    assert isinstance(command, Reconfigure)
    assert command.ranks == {instance(2): 0, instance(3): 1, instance(4): 2}
    assert command.checkpoint is None and command.rendezvous.startswith("10.0.0.2:")
    assert plan.metrics["StepsLost"] == 1


def test_nothing_left_restarts_from_the_newest_durable_checkpoint_once_capacity_arrives() -> None:
    job, nodes = running_job(members=1)
    job = replace(
        job, durable_checkpoint=DurableCheckpoint("s3://backups-b/jobs/digits-demo/ckpt/000000000080/", 80, 1)
    )
    plan = plan_recovery(job, nodes, NodeLost(instance(1), "heartbeat-lost", later(90)))
    # then with no survivor and no capacity the job waits, wanting a replacement
    assert plan.commands == () and plan.job.state is JobState.RECOVERING and plan.job.replacements_wanted == 1
    # when capacity arrives
    plan = plan_recovery(plan.job, nodes, CapacityArrived(instance(9), later(120)))
    (command,) = plan.commands
    assert isinstance(command, Reconfigure)
    assert command.checkpoint is not None and command.checkpoint.step == 80
    assert plan.job.restoring_step == 80
    assert plan.metrics["StepsLost"] == 20, "the workers had reached step 100"


def test_rebalance_with_a_spare_migrates_the_rank_at_once() -> None:
    job, nodes = running_job()
    job = replace(job, spares=(instance(50),))
    plan = plan_recovery(job, nodes, NoticeGiven(instance(4), "rebalance", later(1)))
    (command,) = plan.commands
    assert isinstance(command, Reconfigure) and command.ranks[instance(50)] == 3 and instance(4) not in command.ranks


def test_rebalance_without_spare_prepares_and_waits() -> None:
    job, nodes = running_job()
    plan = plan_recovery(job, nodes, NoticeGiven(instance(4), "rebalance", later(1)))
    assert [c.type for c in plan.commands] == ["CheckpointNow"]
    assert plan.job.generation == 1 and plan.job.replacements_wanted == 1


@pytest.mark.parametrize(
    "signal",
    [
        NoticeGiven(instance(99), "spot-interruption", later(1)),
        NodeLost(instance(99), "instance-stopped", later(1)),
        CheckpointTaken(0, 10, later(1)),
    ],
)
def test_signals_about_strangers_or_old_generations_change_nothing(signal: object) -> None:
    job, nodes = running_job()
    plan = plan_recovery(job, nodes, signal)  # type: ignore[arg-type]
    assert not plan.changed and plan.commands == ()


def test_the_same_signal_twice_decides_nothing_the_second_time() -> None:
    job, nodes = running_job()
    for signal in (
        NoticeGiven(instance(2), "spot-interruption", later(1)),
        NodeLost(instance(3), "instance-stopped", later(2)),
    ):
        once = plan_recovery(job, nodes, signal)
        again = plan_recovery(once.job, nodes, signal)
        assert once.changed and not again.changed and again.commands == ()


def test_a_failure_report_of_an_older_generation_is_ignored() -> None:
    job, nodes = running_job(generation=5)
    plan = plan_recovery(job, nodes, NodeLost(instance(1), "worker-failed", later(1), generation=4))
    assert not plan.changed


def test_jobs_that_are_not_running_are_left_alone() -> None:
    job, nodes = running_job()
    cancelled = replace(job, state=JobState.CANCELLED)
    assert not plan_recovery(cancelled, nodes, NodeLost(instance(1), "instance-stopped", later(1))).changed


def test_final_states_never_move_again() -> None:
    job, _ = running_job()
    with pytest.raises(IllegalTransition):
        replace(job, state=JobState.SUCCEEDED).moved_to(JobState.RUNNING)


def test_below_min_workers_the_survivors_wait_for_capacity() -> None:
    job, nodes = running_job(members=2, min_workers=2)
    plan = plan_recovery(job, nodes, NodeLost(instance(1), "instance-stopped", later(1)))
    assert plan.commands == () and plan.job.replacements_wanted == 1 and plan.job.state is JobState.RECOVERING
    plan = plan_recovery(plan.job, nodes, CapacityArrived(instance(7), later(30)))
    assert [c.type for c in plan.commands] == ["Reconfigure"] and plan.job.world_size == 2


def test_node_updates_follow_the_job_and_release_a_lifecycle_hook_once_the_checkpoint_is_done() -> None:
    job, nodes = running_job()
    hook = LifecycleHook("ringfleet-workers", "ringfleet-checkpoint-before-terminate", "token", instance(2))
    waiting = plan_recovery(job, nodes, NoticeGiven(instance(2), "lifecycle-terminate", later(1), lifecycle_hook=hook))
    updates, release = plan_node_updates(waiting.job, nodes, later(1), hooks={instance(2): hook})
    # while the checkpoint runs, the node is LEAVING and holds its hook
    (leaving,) = updates
    assert leaving.state is NodeState.LEAVING and leaving.lifecycle_hook == hook and release == []
    nodes = [leaving if n.instance_id == leaving.instance_id else n for n in nodes]
    done = plan_recovery(waiting.job, nodes, CheckpointTaken(1, 130, later(30), emergency=True))
    updates, release = plan_node_updates(done.job, nodes, later(30))
    # once the checkpoint is done the hook is completed (the instance may go)
    assert release == [hook] and updates[0].lifecycle_hook is None


def test_the_final_checkpoint_ends_the_job_once_and_releases_its_nodes() -> None:
    job, nodes = running_job()
    # a regular checkpoint from the ring before the current generation changes nothing
    stale = plan_recovery(job, nodes, CheckpointTaken(0, 200, later(5)))
    assert not stale.changed
    # a final one ends the job even from that ring: workers take a growing generation only once its newcomers are
    # ready, so the ring that trains the last step may be the one before the growth the control plane announced
    early = plan_recovery(job, nodes, CheckpointTaken(0, 200, later(5), final=True))
    assert early.job.state is JobState.SUCCEEDED
    # the current ring's final checkpoint ends the job, once
    plan = plan_recovery(job, nodes, CheckpointTaken(1, 200, later(5), final=True))
    assert plan.job.state is JobState.SUCCEEDED and plan.commands == ()
    assert plan.job.incidents[-1].cause == "finished"
    assert not plan_recovery(plan.job, nodes, CheckpointTaken(1, 200, later(6), final=True)).changed
    # and its instances no longer serve it: the scaler frees them and the heartbeat sweep leaves them alone
    updates, _ = plan_node_updates(plan.job, nodes, later(5))
    # released: not free for another job until each agent confirms it runs nothing of this one (InstanceIdle)
    assert {n.state for n in updates} == {NodeState.RELEASED} and len(updates) == len(nodes)


def test_an_emergency_checkpoint_that_beats_its_notice_is_not_waited_for_again() -> None:
    # given workers that saw the spot notice in the instance metadata and checkpointed before EventBridge's warning
    # reached the control plane
    job, nodes = running_job(members=3, max_workers=3)
    early = plan_recovery(job, nodes, CheckpointTaken(1, 53, later(1), emergency=True))
    assert early.changed and early.commands == ()
    assert not plan_recovery(early.job, nodes, CheckpointTaken(1, 53, later(1), emergency=True)).changed
    # when the warning arrives
    plan = plan_recovery(early.job, nodes, NoticeGiven(instance(3), "spot-interruption", later(2)))
    # then no second checkpoint is asked for, and the ring re-forms as soon as the replacement is there
    assert plan.commands == () and plan.job.recovery is not None and not plan.job.recovery.awaiting_checkpoint
    done = plan_recovery(plan.job, nodes, CapacityArrived(instance(50), later(6)))
    (command,) = done.commands
    assert isinstance(command, Reconfigure) and set(command.ranks) == {instance(1), instance(2), instance(50)}


def test_an_idle_agent_frees_its_instance_only_once_its_job_is_over() -> None:
    # given a running job's nodes, and the same job once over (recovery released its nodes)
    job, nodes = running_job()
    node = nodes[0]
    ended = replace(job, state=JobState.SUCCEEDED)
    released = replace(node, state=NodeState.RELEASED)
    # when each node's agent says it runs no job (a booted-again member of a live job says the same)
    # then only the instance of the ended job is freed; a live job's member stays its, and a free one stays free
    assert release_idle(node, job, later(5)) is None, "a live job's member is the sweep's to judge"
    freed = release_idle(released, ended, later(5))
    assert freed is not None and freed.state is NodeState.LOST and freed.job_id == node.job_id
    assert release_idle(freed, ended, later(6)) is None, "already free: the second confirmation changes nothing"
    # and a member of a job cancelled before recovery touched its node is freed too
    cancelled = replace(job, state=JobState.CANCELLED)
    assert (again := release_idle(node, cancelled, later(5))) is not None and again.state is NodeState.LOST
