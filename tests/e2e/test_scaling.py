"""On the local cloud: jobs submitted with the CLI grow the spot fleet across pools; cancelled, it goes to zero."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from ringfleet_local.clock import ManualClock
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.moto_fleet import MotoSpotFleetGateway

from ringfleet.adapters.rabbitmq import publish
from ringfleet.contracts.broker import JOBS_QUEUE
from ringfleet.scaling.ports import FleetSnapshot
from tests.conftest import ROOT, purge_queue
from tests.e2e.support import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]

JOBS = {"e2e-a": ("g5.xlarge", 4), "e2e-b": ("g4dn.xlarge", 3), "e2e-c": ("g6.xlarge", 2)}


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    # Starts at the wall clock's time so the schedule's event times and EventBridge's agree.
    return ManualClock(start=datetime.now(UTC))


@pytest.fixture(scope="module")
def cloud(broker_url: str, clock: ManualClock, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCloud]:
    purge_queue(broker_url, JOBS_QUEUE)
    state_dir = tmp_path_factory.mktemp("state")
    with LocalCloud(ROOT / "template.yaml", broker_url=broker_url, clock=clock, state_dir=state_dir) as c:
        yield c


def cli(cloud: LocalCloud, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RINGFLEET_STATE_DIR": str(cloud.state_dir), "RINGFLEET_TENANT": "acme"}
    return subprocess.run(
        [sys.executable, "-m", "ringfleet_cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=90,
    )


def fleet(cloud: LocalCloud) -> FleetSnapshot:
    return MotoSpotFleetGateway(
        stack=cloud.stack, launch_template="ringfleet-worker", ec2_client=cloud.client("ec2")
    ).snapshot()


def scaler_runs(cloud: LocalCloud) -> int:
    return sum(1 for d in cloud.router.deliveries if d.function == "FleetScalerFunction")


def test_three_jobs_grow_the_fleet_across_pools_and_cancelling_them_empties_it_after_the_idle_timeout(
    cloud: LocalCloud, clock: ManualClock
) -> None:
    # given three jobs submitted through the CLI, each wanting a fixed number of workers of one instance type
    for job_id, (instance_type, workers) in JOBS.items():
        done = cli(
            cloud,
            "submit",
            str(ROOT / "examples/digits/job.yaml"),
            "--set", f"job_id={job_id}",
            "--set", f"instance_types={json.dumps([instance_type])}",
            "--set", f"min_workers={workers}",
            "--set", f"max_workers={workers}",
            # 4 x g5.xlarge cost $4.02/h on demand: the example's $2.50/h could not pay for e2e-a's minimum
            "--set", "budget_usd_per_hour=10",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "admitted" in done.stdout
    # then the fleet's target capacity reaches the sum of their workers, spread over at least two pools
    wanted = sum(w for _, w in JOBS.values())
    wait_until(lambda: sum(fleet(cloud).targets.values()) == wanted)
    snapshot = fleet(cloud)
    assert len([p for p, n in snapshot.targets.items() if n > 0]) >= 2
    assert all(p.startswith("spot:") for p, n in snapshot.targets.items() if n > 0)
    # and the capacity is placed: every job starts RUNNING at generation 1
    wait_until(lambda: all("RUNNING" in cli(cloud, "status", j).stdout for j in JOBS), timeout=60, every=1.0)
    table = cli(cloud, "status").stdout
    assert all(j in table for j in JOBS) and "GEN" in table

    # when all three are cancelled
    before = scaler_runs(cloud)
    for job_id in JOBS:
        done = cli(cloud, "cancel", job_id)
        assert done.returncode == 0, done.stderr
    wait_until(lambda: all("CANCELLED" in cli(cloud, "status", j).stdout for j in JOBS), every=1.0)
    wait_until(lambda: scaler_runs(cloud) > before)
    # then the fleet holds its workers while the idle timeout runs (a new job could take them at once)
    assert sum(fleet(cloud).targets.values()) == wanted
    # and once the idle timeout has passed on the scaler's minute schedule, the fleet is empty
    for _ in range(15):
        runs = scaler_runs(cloud)
        clock.advance(60)
        cloud.router.wait_for(lambda ds, runs=runs: sum(d.function == "FleetScalerFunction" for d in ds) > runs)
        if sum(fleet(cloud).targets.values()) == 0:
            break
    assert sum(fleet(cloud).targets.values()) == 0
    running = cloud.client("ec2").describe_instances(Filters=[{"Name": "instance-state-name", "Values": ["running"]}])
    assert not [i for r in running["Reservations"] for i in r["Instances"]]


def test_hostile_submissions_are_refused_with_the_reason_and_never_reach_the_scaler(cloud: LocalCloud) -> None:
    # given a job file asking for 100,000 workers with a negative budget
    done = cli(
        cloud, "submit", str(ROOT / "examples/digits/job.yaml"), "--set", "job_id=e2e-huge",
        "--set", "max_workers=100000", "--set", "budget_usd_per_hour=-5",
    )  # fmt: skip
    # then the CLI refuses it before sending, saying why
    assert done.returncode != 0
    assert "max_workers" in done.stderr and "budget_usd_per_hour" in done.stderr
    # and the same message published by a client that skipped validation is dropped by job intake
    raw = json.loads((ROOT / "events/messages/job_submitted.json").read_text())
    raw.update(job_id="e2e-raw", max_workers=100000, budget_usd_per_hour=-5)
    delivered = len(cloud.router.deliveries)
    asyncio.run(publish(cloud.broker_url, json.dumps(raw).encode(), queue=JOBS_QUEUE))
    ds = cloud.router.wait_for(lambda ds: any(d.function == "JobIntakeFunction" for d in ds[delivered:]))
    intake = next(d for d in ds[delivered:] if d.function == "JobIntakeFunction")
    (outcome,) = intake.result.result["outcomes"]
    assert intake.result.ok and outcome["outcome"] == "invalid" and outcome["dead_lettered"] == "ringfleet.jobs.dlq"
    assert "max_workers" in outcome["reason"]
    assert "no job" in cli(cloud, "status", "e2e-raw").stderr
    # and a tenant cannot cancel another tenant's job: the CLI says it has no such job
    other = cli(cloud, "cancel", "e2e-a", "--tenant", "globex")
    assert other.returncode != 0 and "no job 'e2e-a' of tenant 'globex'" in other.stderr


def test_submit_dry_run_shows_slots_and_prices_from_the_catalog_and_intake_refuses_an_unknown_type(
    cloud: LocalCloud,
) -> None:
    job = str(ROOT / "examples/digits/job.yaml")
    # when a job asking for multi-GPU instances is checked against the local cloud
    multi_gpu = ["--set", 'instance_types=["p4d.24xlarge","g5.12xlarge"]']
    done = cli(cloud, "submit", job, *multi_gpu, "--set", "budget_usd_per_hour=20", "--dry-run")
    # then each type shows a slot per GPU and its on-demand price, from the local cloud's catalog (read from
    # DescribeInstanceTypes and the Pricing API the local cloud answers)
    assert done.returncode == 0, done.stderr
    assert "from the local cloud's instance catalog:" in done.stdout
    assert "p4d.24xlarge: 8 slots" in done.stdout and "$32.773/h" in done.stdout
    assert "g5.12xlarge: 4 slots" in done.stdout and "$5.672/h" in done.stdout
    # and a minimum its budget cannot pay for on demand is refused naming both, as intake would
    poor = cli(cloud, "submit", job, *multi_gpu, "--dry-run")
    assert poor.returncode == 2 and "$11.34/h on demand" in poor.stderr and "budget of $2.50/h" in poor.stderr
    # and a job asking for a type the catalog does not list is refused naming the ones it lists, before sending
    unknown = cli(cloud, "submit", job, "--set", "job_id=e2e-unknown", "--set", "instance_types=[p9.mega]", "--dry-run")
    assert unknown.returncode == 2 and "p9.mega" in unknown.stderr and "g5.12xlarge, g5.xlarge" in unknown.stderr
    # and by job intake, when sent anyway
    sent = cli(cloud, "submit", job, "--set", "job_id=e2e-unknown", "--set", "instance_types=[p9.mega]")
    assert sent.returncode == 1 and "job rejected: unknown instance type(s) p9.mega" in sent.stderr
    assert "p4d.24xlarge" in sent.stderr
