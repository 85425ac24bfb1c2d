"""Training never waits for a replacement: a worker leaves with notice, its replacement never gets ready, and the
survivors train to the end on their own; the job succeeds and the fleet lets the unused instance go."""

from __future__ import annotations

from pathlib import Path

import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.fleet import FleetEmulator
from ringfleet_local.pace import Pace

from ringfleet.adapters.dynamodb import DynamoDbJobRepository
from ringfleet.core.jobs import JobState
from ringfleet.core.ports import SystemClock
from tests.conftest import ROOT
from tests.e2e.support import digits_job, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

#: Steps of the job: slow ones until the survivors let the leaver go and the job counted its replacement, then the
#: rest at full speed, trained by the two survivors on their own.
STEPS = 200
#: Seconds each step sleeps until then: the job holds nearly still (STEPS * HOLD_S: minutes) while the test waits.
HOLD_S = 0.5


def test_survivors_train_to_the_end_when_the_replacement_never_gets_ready(
    broker_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # given a local cloud whose scaler lets idle instances go after seconds, and a fleet whose instances boot an
    # agent that works, until the incident: from then on new instances boot one that never gets ready
    monkeypatch.setenv("SCALING_IDLE_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("SCALING_COOLDOWN_SECONDS", "5")
    broken = {"on": False}

    def agent_args(job: str | None, instance: str) -> list[str]:
        return ["--log-every", "1", "--timeout", "5"] + (["--not-a-flag"] if broken["on"] else [])

    with LocalCloud(ROOT / "template.yaml", broker_url=broker_url) as cloud:
        emulator = FleetEmulator(cloud.ctx, worker_args=agent_args, log_dir=tmp_path / "workers")
        jobs = DynamoDbJobRepository(
            cloud.ctx.resolve({"Ref": "JobsTable"}), clock=SystemClock(), boto3_resource=cloud.ctx.resource("dynamodb")
        )
        pace = Pace(tmp_path / "step-delay", HOLD_S)
        emulator.start()
        try:
            RingfleetClient(cloud.broker_url).submit(
                digits_job(
                    job_id="never-ready",
                    min_workers=2,
                    max_workers=3,
                    hyperparameters={"steps": STEPS, "commit-every": 1, **pace.hyperparameters()},
                    checkpoint_interval_steps=40,
                )
            )

            def logs() -> dict[str, str]:
                return {i.instance_id: i.log_path.read_text() for i in list(emulator.instances.values())}

            wait_until(lambda: sum(" world 3 " in t for t in logs().values()) == 3, 180, "a ring of three training")
            job = jobs.get("never-ready")
            assert job is not None
            three = set(job.members)
            victim = next(i for i, rank in job.members.items() if rank == 2)

            # when one of them gets a spot interruption notice, and its replacement never gets ready
            broken["on"] = True
            emulator.interrupt(victim, grace_s=5)

            def counted() -> bool:
                # the two others let it go, and the job's newest generation counts its replacement (which never comes)
                job = jobs.get("never-ready")
                left = sum("shrank to 2" in text for i, text in logs().items() if i != victim)
                return left == 2 and job is not None and bool(set(job.members) - three)

            wait_until(counted, 180, "the replacement to be counted")
            # (from now on the survivors may train to the end at full speed)
            pace.full_speed()

            # then the two others train on at once, without it, and finish the job on their own
            def finished() -> list[str]:
                return [i for i, text in logs().items() if f"finished: done at step {STEPS}" in text]

            wait_until(lambda: len(finished()) == 2, 180, "the two survivors to finish")
            survivors = {i: logs()[i] for i in finished()}
            for text in survivors.values():
                assert "shrank to 2" in text and "collective failed" not in text
                assert f"step {STEPS} loss" in text and " world 2 " in text.split(f"step {STEPS} loss")[1]
            # and the job succeeds with their final checkpoint, though its newest generation counted the replacement
            wait_until(lambda: (j := jobs.get("never-ready")) is not None and j.is_final, 60, "the job to end")
            job = jobs.get("never-ready")
            assert job is not None and job.state is JobState.SUCCEEDED
            # and the fleet lets every instance go, the replacement that never got ready included
            wait_until(lambda: not emulator.running_instances(), 180, "the fleet to scale down to zero")
        finally:
            emulator.stop()
