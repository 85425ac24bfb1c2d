"""The live scaler's estimate of the work a job has left, which lets its deadline steer it."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from ringfleet.core.jobs import DurableCheckpoint, Incident, Job
from ringfleet.scaling.reconcile import remaining_hours
from tests.builders import T0, running_job

pytestmark = pytest.mark.unit


def with_steps(total: int | None) -> Job:
    """A job on 2 of its 4 workers whose spec says it ends at step ``total``."""
    job, _ = running_job(members=2, max_workers=4)
    return replace(job, spec=job.spec.model_copy(update={"total_steps": total}))


def test_the_pace_since_admission_at_the_workers_it_has_scaled_to_its_maximum_gives_the_hours_left() -> None:
    # given a job of 1000 steps on 2 of its 4 workers, admitted an hour ago, whose workers reported step 250
    job = with_steps(1000)
    # then 750 steps at 250 an hour on two workers is three hours, an hour and a half on four
    assert remaining_hours(job, 250, T0 + timedelta(hours=1)) == pytest.approx(1.5)


def test_a_durable_checkpoint_counts_when_no_heartbeat_says_more_and_a_finished_count_leaves_nothing() -> None:
    job = replace(with_steps(1000), durable_checkpoint=DurableCheckpoint("s3://b/ckpt/500", 500, 1))
    assert remaining_hours(job, None, T0 + timedelta(hours=1)) == pytest.approx(0.5)
    assert remaining_hours(job, 1000, T0 + timedelta(hours=1)) == 0.0


def test_without_a_total_in_the_job_spec_there_is_no_estimate() -> None:
    assert remaining_hours(with_steps(None), 250, T0 + timedelta(hours=1)) is None


def test_a_steps_hyperparameter_is_the_scripts_business_not_the_estimates() -> None:
    # given a job whose script takes a "steps" hyperparameter but whose spec names no total_steps
    job = with_steps(None)
    job = replace(job, spec=job.spec.model_copy(update={"hyperparameters": {"steps": 1000}}))
    # then the scaler makes no estimate from it (a hyperparameter's name is no contract)
    assert remaining_hours(job, 250, T0 + timedelta(hours=1)) is None
    # and with total_steps in the spec it does, whatever the hyperparameters say
    job = replace(job, spec=job.spec.model_copy(update={"total_steps": 1000, "hyperparameters": {"steps": 7}}))
    assert remaining_hours(job, 250, T0 + timedelta(hours=1)) == pytest.approx(1.5)


def test_before_any_step_is_reported_there_is_no_estimate() -> None:
    assert remaining_hours(with_steps(1000), None, T0 + timedelta(hours=1)) is None


def test_the_pace_counts_from_the_start_not_from_the_hours_the_job_waited_for_capacity() -> None:
    # given a job of 1000 steps admitted ten hours ago, started (placed) one hour ago, now at step 250 on 2 of its
    # 4 workers
    job = with_steps(1000).with_incident(Incident(T0 + timedelta(hours=9), "started", 1, step=0))
    # then 750 steps at 250 an hour is three hours on two workers, an hour and a half on four (counted from its
    # admission: fifteen hours, and the deadline would have taken on-demand for nothing)
    assert remaining_hours(job, 250, T0 + timedelta(hours=10)) == pytest.approx(1.5)


def test_after_a_restore_the_pace_counts_from_the_step_it_restored() -> None:
    # given a job that restarted from its durable checkpoint of step 600 an hour ago and is at step 700 now
    job = with_steps(1000).with_incident(Incident(T0 + timedelta(hours=1), "started", 1, step=0))
    job = job.with_incident(Incident(T0 + timedelta(hours=5), "restarted", 3, step=600))
    # then 300 steps left at 100 an hour: three hours on two workers, an hour and a half on four
    assert remaining_hours(job, 700, T0 + timedelta(hours=6)) == pytest.approx(1.5)
    # and right after the restore, before a step more, the pace since admission stands in (it errs long)
    assert remaining_hours(job, 600, T0 + timedelta(hours=5)) == pytest.approx(400 * (5 / 600) / 2)
