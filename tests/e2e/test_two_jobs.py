"""Two jobs at once on one local fleet (issue 28): two tenants' jobs train side by side through a spot notice each,
their rings never meeting at one rendezvous port and no instance serving both. A job cancelled while it trains is
tests/e2e/test_cancelled_job.py's (the helpers both use are tests/e2e/side_by_side.py).

Every worker of the local fleet runs on this machine (127.0.0.1): where two rings on one host used to be sent to one
port (a fixed base plus the generation), one job's script failed to bind and was restarted, which shows in the
job's incidents as a script failure.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.pace import Pace

from ringfleet.core.commands import rendezvous_port
from ringfleet.core.jobs import JobState
from tests.e2e.side_by_side import HOLD_S, SCALER, Watch, emulator_for, submit
from tests.e2e.support import wait_ticking

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

JOBS = {"acme": "side-acme", "globex": "side-globex"}


def test_two_tenants_jobs_train_side_by_side_through_a_notice_each(cloud: LocalCloud, tmp_path: Path) -> None:
    pace = Pace(tmp_path / "step-delay", HOLD_S)
    emulator = emulator_for(cloud, tmp_path / "workers")
    emulator.start()
    try:
        with Watch(cloud, tuple(JOBS.values())) as watch:
            # when two tenants submit a two-worker job each, at once
            for tenant, job_id in JOBS.items():
                submit(cloud, tenant, job_id, pace)
            # then both run, each on two instances of its own, their rings on ports of their own
            wait_ticking(
                cloud,
                SCALER,
                lambda: all(watch.state(j) is JobState.RUNNING for j in JOBS.values()),
                150,
                "both jobs to run",
            )
            first = {j: watch.job(j) for j in JOBS.values()}
            assert rendezvous_port(first["side-acme"]) != rendezvous_port(first["side-globex"])
            # when each loses a member to a spot interruption (two minutes' notice, here 5 s)
            for job in first.values():
                victim = next(i for i, rank in job.members.items() if rank == 1)
                emulator.interrupt(victim, grace_s=5)
            # then each re-forms without it and takes a replacement, then both train to the end
            wait_ticking(
                cloud,
                SCALER,
                lambda: all(
                    watch.job(j).generation > first[j].generation and len(watch.job(j).members) == 2
                    for j in JOBS.values()
                ),
                180,
                "both jobs to take a replacement",
            )
            pace.full_speed()
            wait_ticking(
                cloud,
                SCALER,
                lambda: all(watch.job(j).is_final for j in JOBS.values()),
                150,
                "both jobs to end",
            )
        assert not watch.errors, watch.errors
        ended = {j: watch.job(j) for j in JOBS.values()}
        assert {j: job.state for j, job in ended.items()} == dict.fromkeys(JOBS.values(), JobState.SUCCEEDED)
        # and no instance ever served both at once
        assert not watch.shared, f"instances held by two jobs at once: {watch.shared[:5]}"
        # and neither ring ever failed to form (a port held by the other job's ring fails its script)
        for job in ended.values():
            causes = [i.cause for i in job.incidents]
            assert "script-failed" not in causes and "restarted" not in causes, (job.job_id, causes)
    finally:
        emulator.stop()
