"""`ringfleet upgrade` on a running local job: its workers are replaced one at a time through the elastic ring while
it trains; it ends SUCCEEDED with every worker on the new version, no step lost, goodput during the upgrade >= 0.95.

The job trains at a steady pace (a sleep per step) until the upgrade completed, then its last steps at full speed:
minutes of steady steps for the upgrade to complete in, without as many spent after it, and goodput measured against
the steady pace.
"""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.fleet import FleetEmulator
from ringfleet_local.pace import Pace
from ringfleet_local.report import measure_goodput
from ringfleet_local.training_events import EventFollower

from ringfleet.adapters.dynamodb import DynamoDbJobRepository
from ringfleet.contracts.training import StepTaken
from ringfleet.core.jobs import JobState
from ringfleet.core.ports import SystemClock
from tests.e2e.support import DIGITS, digits_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]

#: Steps of the job: at the steady pace, minutes of them for the upgrade to complete in (each replacement's agent
#: boots while the job trains: on a loaded machine, a minute or more), the rest at full speed once it completed.
STEPS = 1600
#: Seconds each step sleeps until the upgrade completed: the pace goodput is measured against (the old fixed
#: --step-delay's: a slower one would hide longer stalls inside a normal step).
PACE_S = 0.1
MARKER = "ringfleet-digits version 2"


def test_a_running_job_is_upgraded_worker_by_worker_without_stopping(cloud: LocalCloud, tmp_path: Path) -> None:
    # given the new version of the digits script: the same training, printing a version marker first
    v2 = tmp_path / "train_v2.py"
    source = (DIGITS / "train.py").read_text()
    v2.write_text(source.replace("\nimport argparse\n", f'\nimport argparse\n\nprint("{MARKER}", flush=True)\n', 1))
    logs = tmp_path / "workers"
    emulator = FleetEmulator(cloud.ctx, worker_args=lambda job, instance: ["--log-every", "1"], log_dir=logs)
    emulator.start()
    steps: list[tuple[float, int]] = []
    stop = threading.Event()

    def follow() -> None:
        follower = EventFollower(logs)
        stopping = False
        while not stopping:  # one last look once stopped: the job's last steps come quickly
            stopping = stop.wait(0.2)
            for event in follower.poll():
                if isinstance(event, StepTaken) and event.rank == 0:
                    steps.append((event.at, event.step))

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    table = str(cloud.ctx.resolve({"Ref": "JobsTable"}))
    jobs = DynamoDbJobRepository(table, clock=SystemClock(), boto3_resource=cloud.ctx.resource("dynamodb"))
    client = RingfleetClient(cloud.broker_url, jobs=jobs)
    pace = Pace(tmp_path / "step-delay", PACE_S)
    try:
        # and a job of two workers running the old version
        client.submit(
            digits_job(
                job_id="e2e-upgrade",
                min_workers=2,
                max_workers=2,
                hyperparameters={"steps": STEPS, **pace.hyperparameters()},
                checkpoint_interval_steps=20,
            )
        )
        _wait(lambda: steps and steps[-1][1] >= 30, 180, "the job to train 30 steps")
        # when its tenant upgrades it to the new version
        before = jobs.get("e2e-upgrade")
        original = set(before.members) if before is not None else set()
        client.upgrade("acme", "e2e-upgrade", "local/digits:2", ["python", str(v2)])
        began = time.time()

        def job_done() -> bool:
            job = jobs.get("e2e-upgrade")
            return job is not None and job.is_final

        def upgraded() -> bool:
            job = jobs.get("e2e-upgrade")
            ends = ("upgrade-completed", "upgrade-rolled-back")
            return job is not None and (job.is_final or any(i.cause in ends for i in job.incidents))

        _wait(upgraded, 180, "the upgrade to complete")
        ended = time.time()
        # (the steps left train at full speed: the ones goodput is measured against ended before)
        pace.full_speed()
        _wait(job_done, 180, "the job to end")
    finally:
        stop.set()
        watcher.join(5)
        emulator.stop()
    job = jobs.get("e2e-upgrade")
    assert job is not None
    causes = [i.cause for i in job.incidents]
    # then the upgrade completed (never rolled back) and the job ended SUCCEEDED
    details = [(i.cause, i.detail[-300:]) for i in job.incidents if i.cause.startswith("upgrade-")]
    assert "upgrade-started" in causes and "upgrade-completed" in causes, details
    assert "upgrade-rolled-back" not in causes and job.state is JobState.SUCCEEDED, (job.state, causes)
    # and every worker in the final ring is a new one, running the new version
    assert original and not original & set(job.members), (original, job.members)
    for instance in job.members:
        assert MARKER in (logs / f"{instance}.log").read_text(), f"{instance} did not run the new version"
    # and no step was lost: every step trained once, in order, to the last
    trained = [s for _, s in steps]
    assert trained[-1] == STEPS and sorted(set(trained)) == list(range(trained[0], STEPS + 1))
    assert all(b >= a for a, b in itertools.pairwise(trained)), "a step was trained again"
    # and goodput during the upgrade stayed at 0.95 or more (a normal step: one of the steady pace, before `ended`)
    goodput = measure_goodput([s for s in steps if s[0] < ended], (began, ended))
    assert goodput is not None and goodput.ratio >= 0.95, goodput


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
