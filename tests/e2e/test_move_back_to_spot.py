"""Workers move back from on-demand to spot when spot capacity returns (issue 14), on the local cloud replaying a
spot availability trace: no spot in any zone at first, so the digits job starts on on-demand; once the scaler asks
spot again and it has room, each on-demand member is replaced by a spot worker through the elastic ring (the
replacement joins as a grow, the next checkpoint leaves the on-demand member out), and the job ends SUCCEEDED with
no step lost.

The trace replays in simulated time (a ``FileClock`` the test moves, read by the emulator and the scaler's process
alike): the outage lasts until the job runs on on-demand, and spot returns when the test moves the trace past it,
instead of after a wall-clock outage raced against the cloud's start. The scaler's minute ticks are brought forward
while the test waits for what they bring about (``wait_ticking``), and its refusal timers are shortened
(SCALING_CAPACITY_GRACE_SECONDS: a spot pool short this long after a change is refused;
SCALING_REFUSAL_BACKOFF_SECONDS: and left alone this long): at their defaults (3 and 15 minutes) and with a tick a
minute the same run takes twenty minutes. The job trains slowly until both workers moved back, then its last steps at
full speed.
"""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local.clock import FileClock
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.fleet import FleetEmulator
from ringfleet_local.moto_fleet import MotoSpotFleetGateway
from ringfleet_local.pace import Pace
from ringfleet_local.spot_traces import replay_from_options, write_trace
from ringfleet_local.training_events import EventFollower

from ringfleet.adapters.dynamodb import DynamoDbJobRepository
from ringfleet.contracts.training import StepTaken
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.ports import SystemClock
from tests.conftest import ROOT
from tests.e2e.support import digits_job, wait_ticking, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

#: Trace-minutes per second of the trace's clock (the spot notice: 2 s).
SPEED = 60.0
ZONES = ("us-east-1a", "us-east-1b")
#: Trace-minutes without any spot capacity from the trace's start: the scaler's first launch (the job's admission) is
#: refused, a run past the grace gives up on spot. The trace stands there until the test moves its clock past it.
OUTAGE = 45
#: The spot pools are left alone this long (wall clock, the scaler's own) once refused: they are asked again after
#: the test ended the outage, which it does as soon as the job runs on on-demand.
BACKOFF_S = 20
#: Steps of the job: slow ones until both workers moved back, then the rest at full speed.
STEPS = 800
#: Seconds each step sleeps until then (STEPS * HOLD_S: minutes for the moves). A retiring worker leaves at a step
#: boundary, so a step stays short beside the scaler's grace before it releases the worker's instance.
HOLD_S = 0.2
#: Steps between checkpoints: a move completes at the first checkpoint of the ring that includes the replacement.
CHECKPOINT_STEPS = 20
JOB = "move-back"


def test_on_demand_workers_move_back_to_spot_when_spot_capacity_returns(
    broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a trace of two zones without spot capacity for OUTAGE minutes, then with four p3.2xlarge each for an hour
    traces = tmp_path / "traces"
    traces.mkdir()
    for zone in ZONES:
        write_trace(traces / f"{zone}_v100_1.json", [0] * OUTAGE + [4] * 3600, gap_seconds=60)
    trace_clock = FileClock(tmp_path / "trace-clock", start=0)
    replay = replay_from_options(traces, speed=SPEED, clock=trace_clock)
    assert replay is not None
    monkeypatch.setenv("SCALING_CAPACITY_GRACE_SECONDS", "5")
    monkeypatch.setenv("SCALING_REFUSAL_BACKOFF_SECONDS", str(BACKOFF_S))
    logs = tmp_path / "workers"
    steps: list[int] = []
    #: instance -> pool, of every instance the fleet ran meanwhile (a released one leaves the fleet's listing).
    pools: dict[str, str] = {}
    errors: list[str] = []
    stop = threading.Event()
    pace = Pace(tmp_path / "step-delay", HOLD_S)
    with LocalCloud(ROOT / "template.yaml", broker_url=broker_url, function_env=replay.environment()) as cloud:
        gateway = MotoSpotFleetGateway(
            stack=cloud.stack, launch_template="ringfleet-worker", ec2_client=cloud.client("ec2")
        )

        def watch() -> None:
            follower = EventFollower(logs)
            stopping = False
            while not stopping:  # one last look once stopped: the job's last steps come quickly
                stopping = stop.wait(0.5)
                try:
                    pools.update({i.instance_id: i.pool for i in gateway.snapshot().instances})
                    steps.extend(e.step for e in follower.poll() if isinstance(e, StepTaken) and e.rank == 0)
                except Exception as exc:  # the test fails on it, naming it, rather than watching nothing
                    errors.append(repr(exc))
                    raise

        emulator = FleetEmulator(
            cloud.ctx, worker_args=lambda job, instance: ["--log-every", "1"], log_dir=logs, replay=replay
        )
        jobs = DynamoDbJobRepository(
            cloud.ctx.resolve({"Ref": "JobsTable"}), clock=SystemClock(), boto3_resource=cloud.ctx.resource("dynamodb")
        )

        def job() -> Job:
            found = jobs.get(JOB)
            assert found is not None
            return found

        def incidents(cause: str) -> list[str]:
            return [i.instance_id or "" for i in job().incidents if i.cause == cause]

        emulator.start()
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            # when the digits job of two workers is submitted while no zone has spot capacity
            RingfleetClient(cloud.broker_url).submit(
                digits_job(
                    job_id=JOB,
                    min_workers=2,
                    max_workers=2,
                    instance_types=["p3.2xlarge"],
                    hyperparameters={"steps": STEPS, **pace.hyperparameters()},
                    checkpoint_interval_steps=CHECKPOINT_STEPS,
                )
            )
            # then it starts on two on-demand workers
            scaler = "FleetScalerFunction"
            wait_ticking(cloud, scaler, lambda: errors or pools, 90, "the first instance")
            assert not errors, errors
            wait_ticking(
                cloud,
                scaler,
                lambda: (j := jobs.get(JOB)) is not None and j.state is JobState.RUNNING,
                120,
                "the job to start",
            )
            started = job()
            assert all(pools.get(i, "").startswith("on-demand:") for i in started.members), (started.members, pools)
            # and once spot has room again, both move back to spot, one at a time, through the ring
            trace_clock.set(OUTAGE)
            wait_ticking(
                cloud, scaler, lambda: len(incidents("move-back-completed")) == 2 or job().is_final, 400, "two moves"
            )
            moved = job()
            assert not moved.is_final, "the job ended before both workers moved back: make STEPS or HOLD_S larger"
            on_demand_now = [i for i in gateway.snapshot().instances if i.pool.startswith("on-demand:")]
            pace.full_speed()
            try:
                wait_until(lambda: job().is_final, 240, "the job to end")
                final = job()  # read while the local cloud still runs
            except TimeoutError:
                left = job()
                tail = [(i.cause, i.instance_id, i.generation, i.detail[-120:]) for i in left.incidents[-8:]]
                raise AssertionError((left.state, left.generation, left.members, tail, steps[-3:])) from None
        finally:
            stop.set()
            watcher.join(5)
            emulator.stop()
    causes = [(i.cause, i.instance_id) for i in final.incidents if i.cause.startswith("move-back-")]
    # then the job ended SUCCEEDED
    assert final.state is JobState.SUCCEEDED, (final.state, causes)
    # and each on-demand worker it started on was replaced (a move back started and completed for each)
    of_final = {
        cause: sorted(i.instance_id or "" for i in final.incidents if i.cause == cause)
        for cause in ("move-back-started", "move-back-completed")
    }
    assert of_final["move-back-started"] == sorted(started.members), causes
    assert of_final["move-back-completed"] == sorted(started.members), causes
    # and the ring it trained on after the moves was all spot, no on-demand instance serving it
    assert set(moved.members).isdisjoint(started.members), (moved.members, started.members)
    assert all(pools.get(i, "").startswith("spot:") for i in moved.members), (moved.members, pools)
    assert not {i.instance_id for i in on_demand_now} & set(moved.members), on_demand_now
    # and no step was lost: rank 0 trained every step once, in order, to the last
    assert steps and steps[-1] == STEPS, steps[-20:]
    assert sorted(set(steps)) == list(range(steps[0], STEPS + 1)), "a step was never trained"
    repeated = [(a, b) for a, b in itertools.pairwise(steps) if b <= a]
    assert not repeated, f"a step was trained again: {repeated[:10]}"
