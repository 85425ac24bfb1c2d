"""A job submitted through the client trains to the end on emulated instances, steered by the real handlers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.fleet import FleetEmulator

from tests.e2e.support import digits_job

pytestmark = pytest.mark.e2e

STEPS = 40


def test_submitted_job_is_placed_on_three_instances_that_train_it_together(cloud: LocalCloud, tmp_path: Path) -> None:
    # given the fleet emulator, which boots a worker with every instance the scaler launches, as the container
    # boots with its instance in AWS: it knows no job until placement sends its first Reconfigure
    emulator = FleetEmulator(
        cloud.ctx,
        worker_args=lambda job, instance: ["--log-every", "10"],
        log_dir=tmp_path / "workers",
    )
    emulator.start()
    try:
        # when an app submits a job for exactly three workers
        RingfleetClient(cloud.broker_url).submit(
            digits_job(
                job_id="e2e-train",
                min_workers=3,
                max_workers=3,
                hyperparameters={"steps": STEPS},
                checkpoint_interval_steps=20,
            )
        )

        # then the scaler launches three instances, placement sends them a Reconfigure (waiting in each instance's
        # mailbox while its worker starts), and the three train one ring to the last step
        def finished() -> list[str]:
            return [
                i.instance_id
                for i in emulator.instances.values()
                if f"finished: done at step {STEPS}" in i.log_path.read_text()
            ]

        deadline = time.monotonic() + 240
        while len(finished()) < 3 and time.monotonic() < deadline:
            time.sleep(1)
        logs = {i.instance_id: i.log_path.read_text()[-2000:] for i in emulator.instances.values()}
        assert len(finished()) == 3, f"workers did not all finish: {logs}"
        assert all("world 3 rank" in text and "generation 1" in text for text in logs.values())
        # and rank 0's checkpoints landed in S3 and were backed up by checkpoint_backup
        cloud.router.wait_for(
            lambda ds: (
                sum(
                    1
                    for d in ds
                    if d.function == "CheckpointBackupFunction" and d.result.ok and "e2e-train" in str(d.event)
                )
                >= 2
            ),
            timeout=60,
        )
    finally:
        emulator.stop()
