"""The local cloud replaying a spot availability trace: a drop that takes two of the digits job's three instances at
once (the emulator gives both the notice in one poll, the scaler's launches are refused while the pool is short),
and the job trains on and completes.

The trace replays in simulated time (a ``FileClock`` the test moves, read by the emulator and the scaler's process
alike): the drop comes once the ring of three trains, and the pool stays short while the test makes the scaler run
(its minute's tick brought forward), instead of at wall-clock moments the job's pace had to be fitted around. The job
trains slowly until the drop has passed, then its last steps at full speed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local.clock import FileClock
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.fleet import FleetEmulator
from ringfleet_local.moto_fleet import MotoSpotFleetGateway
from ringfleet_local.pace import Pace
from ringfleet_local.spot_traces import replay_from_options, write_trace

from ringfleet.adapters.dynamodb import DynamoDbJobRepository
from ringfleet.core.jobs import JobState
from ringfleet.core.ports import SystemClock
from ringfleet.scaling.ports import FleetSnapshot
from tests.conftest import ROOT
from tests.e2e.support import digits_job, tick, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

#: Trace-minutes per second of the trace's clock: the spot notice lasts two seconds.
SPEED = 60.0
#: Trace-minutes of three instances available, then of one.
PLENTY, SCARCE = 110, 30
#: Scaler runs the test makes while the pool is short (the job wants its two instances back).
RUNS_WHILE_SHORT = 3
#: Steps of the job: slow ones until the drop has passed, then the rest (the survivor's) at full speed.
STEPS = 800
#: Seconds each step sleeps until then: the job holds nearly still (STEPS * HOLD_S: minutes) while the ring of three
#: forms and the drop passes.
HOLD_S = 0.2


def fleet(cloud: LocalCloud) -> FleetSnapshot:
    # Without a capacity check: what moto holds.
    return MotoSpotFleetGateway(
        stack=cloud.stack, launch_template="ringfleet-worker", ec2_client=cloud.client("ec2")
    ).snapshot()


def scaler_runs(cloud: LocalCloud) -> int:
    return sum(1 for d in cloud.router.deliveries if d.function == "FleetScalerFunction")


def test_the_digits_job_survives_a_trace_drop_that_takes_two_of_its_instances_at_once(
    broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a trace of one zone with three p3.2xlarge for a while, then one for half an hour, then three again
    traces = tmp_path / "traces"
    traces.mkdir()
    write_trace(traces / "us-east-1a_v100_1.json", [3] * PLENTY + [1] * SCARCE + [3] * 600, gap_seconds=60)
    trace_clock = FileClock(tmp_path / "trace-clock", start=0)
    replay = replay_from_options(traces, speed=SPEED, clock=trace_clock)
    assert replay is not None
    monkeypatch.setenv("SCALING_COOLDOWN_SECONDS", "5")
    reclaims: list[tuple[float, str]] = []
    #: Fleet scaler runs done when the drop came.
    at_drop: list[int] = []

    def on_event(kind: str, detail: dict[str, Any]) -> None:
        if kind == "trace-reclaim":
            if not reclaims:
                at_drop.append(scaler_runs(cloud))
            reclaims.append((time.monotonic(), detail["instance_id"]))

    # and a local cloud replaying it: the emulator interrupts, the scaler's launches are checked against it
    with LocalCloud(ROOT / "template.yaml", broker_url=broker_url, function_env=replay.environment()) as cloud:
        emulator = FleetEmulator(
            cloud.ctx,
            worker_args=lambda job, instance: ["--log-every", "10"],
            log_dir=tmp_path / "workers",
            replay=replay,
            on_event=on_event,
        )
        jobs = DynamoDbJobRepository(
            cloud.ctx.resolve({"Ref": "JobsTable"}), clock=SystemClock(), boto3_resource=cloud.ctx.resource("dynamodb")
        )
        pace = Pace(tmp_path / "step-delay", HOLD_S)
        emulator.start()
        try:
            # when the digits job runs there on up to three spot workers
            RingfleetClient(cloud.broker_url).submit(
                digits_job(
                    job_id="trace-drop",
                    min_workers=1,
                    max_workers=3,
                    instance_types=["p3.2xlarge"],
                    hyperparameters={"steps": STEPS, "commit-every": 1, **pace.hyperparameters()},
                    checkpoint_interval_steps=200,
                )
            )

            def logs() -> dict[str, str]:
                return {i.instance_id: i.log_path.read_text() for i in list(emulator.instances.values())}

            wait_until(lambda: sum(" world 3 " in t for t in logs().values()) == 3, 150, "a ring of three")
            assert not reclaims, reclaims

            # then the drop takes two of the three at once (one poll), and nothing more while the pool is short
            trace_clock.set(PLENTY)
            wait_until(lambda: len(reclaims) >= 2, 30, "the trace to take two instances")
            taken = {iid for _, iid in reclaims}
            wait_until(
                lambda: taken.isdisjoint(i.instance_id for i in fleet(cloud).instances),
                replay.grace_s + 30,
                "the two to be terminated after their notice",
            )
            # and while the zone has one, the scaler runs (the job wants its two back) but no launch gets through
            held, ran = [], []
            for _ in range(RUNS_WHILE_SHORT):
                ran.append(tick(cloud, "FleetScalerFunction").result.ok)
                held.append(fleet(cloud).fulfilled.get("spot:p3.2xlarge:us-east-1a", 0))
            assert any(ran) and max(held) <= 1 and scaler_runs(cloud) > at_drop[0], (held, ran, at_drop)
            assert len(reclaims) == 2 and abs(reclaims[0][0] - reclaims[1][0]) < 1.0, reclaims
            job = jobs.get("trace-drop")
            assert job is not None and not job.is_final, "the job ended before the drop: make STEPS or HOLD_S larger"
            survivors = [i for i in job.members if i not in {iid for _, iid in reclaims}]
            assert survivors, job.members
            pace.full_speed()
            # and the job trains on through it and completes, the zone's three back after the scarce half hour
            trace_clock.set(PLENTY + SCARCE)
            wait_until(lambda: (j := jobs.get("trace-drop")) is not None and j.is_final, 400, "the job to end")
            job = jobs.get("trace-drop")
            assert job is not None and job.state is JobState.SUCCEEDED, job
            text = (tmp_path / "workers" / f"{survivors[0]}.log").read_text()
            assert "collective failed" not in text
            assert f"finished: done at step {STEPS}" in text, text[-3000:]
        finally:
            emulator.stop()
