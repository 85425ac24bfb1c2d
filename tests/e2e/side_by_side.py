"""What the e2e tests of jobs side by side on one local fleet share (tests/e2e/test_two_jobs.py,
tests/e2e/test_cancelled_job.py): the digits job they submit, the fleet emulator they run it on, and a watch of
which instances each job holds."""

from __future__ import annotations

import threading
from pathlib import Path

from ringfleet_client import RingfleetClient
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.fleet import FleetEmulator
from ringfleet_local.pace import Pace

from ringfleet.adapters.dynamodb import DynamoDbJobRepository
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.ports import SystemClock
from tests.e2e.support import POLL_S, digits_job

SCALER = "FleetScalerFunction"
STEPS = 400
#: The jobs' pace while the test waits for what it looks at (seconds per step); then they run to the end at full speed.
HOLD_S = 0.1
#: A step slow enough that a cancelled job's workers still train for seconds after the cancel.
SLOW_STEP_S = 4.0


class Watch:
    """Reads the jobs table every ``POLL_S``: which instances each job holds (members and spares) at each read, so that
    an instance serving two jobs at once is seen, not only the end state."""

    def __init__(self, cloud: LocalCloud, job_ids: tuple[str, ...]) -> None:
        self.repo = DynamoDbJobRepository(
            cloud.ctx.resolve({"Ref": "JobsTable"}), clock=SystemClock(), boto3_resource=cloud.ctx.resource("dynamodb")
        )
        self.job_ids = list(job_ids)
        self.shared: list[tuple[str, ...]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def job(self, job_id: str) -> Job:
        found = self.repo.get(job_id)
        assert found is not None, job_id
        return found

    def state(self, job_id: str) -> JobState | None:
        """The job's state; None before it was admitted."""
        found = self.repo.get(job_id)
        return None if found is None else found.state

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                held: dict[str, str] = {}
                for job_id in list(self.job_ids):
                    job = self.repo.get(job_id)
                    if job is None or job.is_final:
                        continue
                    for instance in (*job.members, *job.spares):
                        if instance in held:
                            self.shared.append((instance, held[instance], job_id))
                        held[instance] = job_id
            except Exception as exc:  # named by the test rather than silently watching nothing
                self.errors.append(repr(exc))

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def emulator_for(cloud: LocalCloud, logs: Path) -> FleetEmulator:
    return FleetEmulator(cloud.ctx, worker_args=lambda job, instance: ["--log-every", "10"], log_dir=logs)


def submit(cloud: LocalCloud, tenant: str, job_id: str, pace: Pace, steps: int = STEPS) -> None:
    RingfleetClient(cloud.broker_url).submit(
        digits_job(
            tenant=tenant,
            job_id=job_id,
            min_workers=2,
            max_workers=2,
            total_steps=steps,
            hyperparameters={"steps": steps, "commit-every": 1, **pace.hyperparameters()},
            checkpoint_interval_steps=50,
        )
    )


def trained(emulator: FleetEmulator, lines: int) -> bool:
    return any(i.log_path.read_text().count(" loss ") >= lines // 10 for i in emulator.instances.values())
