"""A job cancelled while it trains lets go of its instances only once their agents confirm nothing of it runs there
any more (InstanceIdle), before another job of its tenant is placed on them (issue 28; an instance never serves
another tenant, issue 23: tests/unit/test_plan_reconcile.py). A file of its own so that pytest-xdist runs
it beside tests/e2e/test_two_jobs.py (what both use: tests/e2e/side_by_side.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.pace import Pace

from ringfleet.core.jobs import JobState
from tests.e2e.side_by_side import HOLD_S, SCALER, SLOW_STEP_S, Watch, emulator_for, submit, trained
from tests.e2e.support import wait_ticking

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_a_cancelled_jobs_instances_are_placed_again_only_once_their_agents_confirm_it_gone(
    cloud: LocalCloud, tmp_path: Path
) -> None:
    pace = Pace(tmp_path / "step-delay", HOLD_S)
    emulator = emulator_for(cloud, tmp_path / "workers")
    emulator.start()
    try:
        with Watch(cloud, ("cancelled", "next")) as watch:
            # given a job training on two instances
            submit(cloud, "acme", "cancelled", pace)
            wait_ticking(cloud, SCALER, lambda: watch.state("cancelled") is JobState.RUNNING, 150, "it to run")
            wait_ticking(cloud, SCALER, lambda: trained(emulator, 20), 60, "it to train")
            held = set(watch.job("cancelled").members)
            # when its tenant cancels it while its workers are in the middle of slow steps (they obey the Stop at
            # their next step boundary, seconds later), and submits another job at once
            pace.set(SLOW_STEP_S)
            time.sleep(2 * HOLD_S + 0.5)  # each worker has read the slow pace
            RingfleetClient(cloud.broker_url).cancel("acme", "cancelled")
            cancelled_at = time.time()
            submit(cloud, "acme", "next", pace, steps=40)
            wait_ticking(cloud, SCALER, lambda: held <= set(emulator.exits), 60, "the cancelled job's workers to exit")
            pace.full_speed()
            wait_ticking(cloud, SCALER, lambda: watch.state("next") is JobState.RUNNING, 150, "the next to run")
            started = watch.job("next")
        assert watch.job("cancelled").state is JobState.CANCELLED
        # then the next job runs on the cancelled job's instances (idle now), and on each only after the cancelled
        # job's worker there had exited (its agent, started again, said InstanceIdle)
        reused = held & set(started.members)
        assert reused, f"the next job got new instances ({started.members}), not the cancelled one's ({held})"
        placed_at = next(i.at for i in started.incidents if i.cause == "started").timestamp()
        for instance in reused:
            exited = emulator.exits.get(instance, [])
            assert exited and cancelled_at <= exited[0] <= placed_at, (instance, exited, cancelled_at, placed_at)
        assert not watch.shared, watch.shared[:5]
    finally:
        emulator.stop()
