"""plan_placement: a waiting job starts on free instances, and its first Reconfigure tells them what to run."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from ringfleet.contracts import Program
from ringfleet.core.jobs import JobState
from ringfleet.scaling.placement import FreeInstance, plan_placement
from tests.builders import instance, later, running_job

pytestmark = pytest.mark.unit


def test_a_pending_job_starts_and_its_first_reconfigure_names_the_program_its_agents_run() -> None:
    # given a PENDING job (2..3 workers) and three free instances of its types, booted with no job
    job, _ = running_job(members=0, generation=0, min_workers=2, max_workers=3)
    job = replace(job, state=JobState.PENDING, members={})
    free = [FreeInstance(instance(n), "g5.xlarge", f"spot:g5.xlarge:us-east-1{'abc'[n - 1]}") for n in (1, 2, 3)]
    # when placement runs
    (start,) = plan_placement([job], free, later(1)).starts
    # then the job runs at generation 1 on all three, and the Reconfigure they get carries the job's program:
    # an agent that never heard of the job learns from it which image, entrypoint and hyperparameters to run
    command = start.command
    assert start.job.state is JobState.RUNNING and command.generation == 1 and command.world_size == 3
    assert command.program == Program.of(job.spec)
    assert command.program is not None
    assert command.program.entrypoint == job.spec.entrypoint
    assert command.program.hyperparameters == job.spec.hyperparameters
    # and the command is in the job's outbox as it will go on the wire, program included
    assert start.job.outbox[0]["program"]["image"] == job.spec.image


def test_a_job_on_a_one_gpu_and_a_four_gpu_instance_runs_a_slot_per_gpu_capped_by_its_slots_per_instance() -> None:
    # given a PENDING job of two workers, and two free instances: one GPU and four GPUs (the catalog's slots)
    job, _ = running_job(members=0, generation=0, min_workers=2, max_workers=2)
    spec = job.spec.model_copy(update={"instance_types": ["g5.xlarge", "g5.12xlarge"]})
    job = replace(job, state=JobState.PENDING, members={}, spec=spec)
    one, four = instance(1), instance(2)
    free = [
        FreeInstance(one, "g5.xlarge", "spot:g5.xlarge:us-east-1a", host="10.0.0.1", slots=1),
        FreeInstance(four, "g5.12xlarge", "spot:g5.12xlarge:us-east-1b", host="10.0.0.2", slots=4),
    ]
    # when placement starts it
    (start,) = plan_placement([job], free, later(1)).starts
    # then its Reconfigure names the four-GPU member's 4 slots (the one-GPU member, not named, runs one)
    assert start.command.slots == {four: 4}
    assert Counter(start.command.process_instances()) == {one: 1, four: 4}  # a ring of five processes
    # and the nodes it claims record each instance's slots, for recovery's later Reconfigures
    assert {n.instance_id: n.slots for n in start.claims} == {one: 1, four: 4}
    # when the job asks for at most 2 slots per instance, the four-GPU member runs 2
    capped = replace(job, spec=spec.model_copy(update={"slots_per_instance": 2}))
    (start,) = plan_placement([capped], free, later(1)).starts
    assert start.command.slots == {four: 2}
    assert start.job.outbox[0]["slots"] == {four: 2}
    # and on one-GPU instances alone no slots are named: the Reconfigure it always was
    small = [replace(free[1], instance_type="g5.xlarge", slots=1), free[0]]
    (start,) = plan_placement([job], small, later(1)).starts
    assert start.command.slots == {}


def test_an_on_demand_instance_goes_to_the_job_it_was_bought_for_not_to_the_first_that_fits() -> None:
    # given a running job that wants one more worker and can wait for spot (served first: it already runs), and an
    # urgent pending job for which the fleet bought one on-demand instance (its deadline is near)
    waiting, _ = running_job("can-wait", members=1, min_workers=1, max_workers=2)
    urgent, _ = running_job("urgent", members=0, generation=0, min_workers=1, max_workers=1)
    urgent = replace(urgent, state=JobState.PENDING, members={})
    on_demand = "on-demand:g5.xlarge:us-east-1a"
    free = [FreeInstance(instance(7), "g5.xlarge", on_demand)]
    # when placement runs, told what the decision bought for whom
    placement = plan_placement([waiting, urgent], free, later(1), {"urgent": {on_demand: 1}, "can-wait": {}})
    # then the urgent job starts on it, and the other gets none (before, it took it and the urgent one waited)
    assert [s.job.job_id for s in placement.starts] == ["urgent"] and not placement.replacements
    # and without that bound the first job that fits took it
    unbounded = plan_placement([waiting, urgent], free, later(1))
    assert [job for job, _ in unbounded.replacements] == ["can-wait"] and not unbounded.starts
