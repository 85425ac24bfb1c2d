"""Two jobs at once on one local fleet (issue 28): two tenants' jobs train side by side through a spot notice each,
their rings never meeting at one rendezvous port and no instance serving both. A job cancelled while it trains is
tests/e2e/test_cancelled_job.py's (its helpers are here).

Every worker of the local fleet runs on this machine (127.0.0.1): where two rings on one host used to be sent to one
port (a fixed base plus the generation), one job's script failed to bind and was restarted, which shows in the
job's incidents as a script failure.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.fleet import FleetEmulator

from ringfleet.adapters.dynamodb import DynamoDbJobRepository
from ringfleet.contracts.broker import JOBS_QUEUE
from ringfleet.core.commands import rendezvous_port
from ringfleet.core.jobs import Job, JobState
from ringfleet.core.ports import SystemClock
from tests.conftest import ROOT, purge_queue
from tests.e2e.support import Pace, digits_job, wait_ticking

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

SCALER = "FleetScalerFunction"
STEPS = 400
#: The jobs' pace while the test waits for what it looks at (seconds per step); then they run to the end at full speed.
HOLD_S = 0.1
JOBS = {"acme": "side-acme", "globex": "side-globex"}
#: A step slow enough that a cancelled job's workers still train for seconds after the cancel.
SLOW_STEP_S = 4.0


@pytest.fixture
def cloud(broker_url: str, tmp_path: Path) -> Iterator[LocalCloud]:
    purge_queue(broker_url, JOBS_QUEUE)
    with LocalCloud(ROOT / "template.yaml", broker_url=broker_url, state_dir=tmp_path / "state") as c:
        yield c


class Watch:
    """Reads the jobs table every 0.2 s: which instances each job holds (members and spares) at each read, so that an
    instance serving two jobs at once is seen, not only the end state."""

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
        while not self._stop.wait(0.2):
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


def _emulator(cloud: LocalCloud, logs: Path) -> FleetEmulator:
    return FleetEmulator(cloud.ctx, worker_args=lambda job, instance: ["--log-every", "10"], log_dir=logs)


def _submit(cloud: LocalCloud, tenant: str, job_id: str, pace: Pace, steps: int = STEPS) -> None:
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


def test_two_tenants_jobs_train_side_by_side_through_a_notice_each(cloud: LocalCloud, tmp_path: Path) -> None:
    pace = Pace(tmp_path / "step-delay", HOLD_S)
    emulator = _emulator(cloud, tmp_path / "workers")
    emulator.start()
    try:
        with Watch(cloud, tuple(JOBS.values())) as watch:
            # when two tenants submit a two-worker job each, at once
            for tenant, job_id in JOBS.items():
                _submit(cloud, tenant, job_id, pace)
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


def _trained(emulator: FleetEmulator, lines: int) -> bool:
    return any(i.log_path.read_text().count(" loss ") >= lines // 10 for i in emulator.instances.values())
