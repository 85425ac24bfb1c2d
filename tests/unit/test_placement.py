"""plan_placement: a waiting job starts on free instances, and its first Reconfigure tells them what to run."""

from __future__ import annotations

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
