"""The container path, end to end (issue 22 point 4): each instance boots its agent in the worker image (as AWS's
launch template does), the agent starts the job's own image beside itself through the Docker engine, and the job
trains on two 4-GPU instances, two slots each, through a spot notice to SUCCEEDED; the job's container has neither
the engine's socket nor any privilege.

The images are built here, from this checkout and examples/digits, on this machine's Docker engine with no registry
(``ringfleet_local.images``: the first build takes minutes, later ones find them built). No engine fails the test
with how to start one: .ci/run starts it."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from ringfleet_client import RingfleetClient
from ringfleet_local import images
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.fleet import FleetEmulator
from ringfleet_local.training_events import events_file

from ringfleet.contracts.messages import CONTAINER_INSTANCE_LABEL, CONTAINER_ROLE_LABEL
from ringfleet.contracts.training import RankLeft, parse_training_event
from ringfleet.core.jobs import JobState
from tests.conftest import ROOT
from tests.e2e.side_by_side import SCALER, Watch
from tests.e2e.support import DIGITS, digits_job, wait_ticking

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

JOB = "in-containers"
STEPS = 120
#: Seconds per step: the job trains for half a minute and more, long enough for its notice and its ring to shrink.
STEP_S = 0.3


@pytest.fixture(scope="module")
def built() -> tuple[str, str]:
    """(worker image, job image), built when this checkout has none yet."""
    images.docker_ready()
    return images.worker_image(), images.job_image(DIGITS, "ringfleet-digits", root=ROOT)


def _containers(role: str, instance: str | None = None) -> list[dict[str, Any]]:
    filters = [f"--filter=label={CONTAINER_ROLE_LABEL}={role}"]
    if instance:
        filters.append(f"--filter=label={CONTAINER_INSTANCE_LABEL}={instance}")
    ids = subprocess.run(["docker", "ps", "-q", *filters], capture_output=True, text=True, check=True).stdout.split()
    if not ids:
        return []
    found: list[dict[str, Any]] = json.loads(
        subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True).stdout
    )
    return found


def _sockets(container: dict[str, Any]) -> list[str]:
    return [m["Source"] for m in container["Mounts"] if m["Source"].endswith("docker.sock")]


def _trained_in_ring_of(log: Path, world: int) -> bool:
    return log.exists() and re.search(rf"\bworld {world} rank \d+ generation \d+$", log.read_text(), re.M) is not None


def test_a_job_image_trains_on_two_container_instances_through_a_spot_notice(
    cloud: LocalCloud, tmp_path: Path, built: tuple[str, str]
) -> None:
    worker, job_image = built
    logs = tmp_path / "workers"
    emulator = FleetEmulator(
        cloud.ctx, worker_args=lambda job, instance: ["--log-every", "10"], log_dir=logs, containers=worker
    )
    emulator.start()
    try:
        with Watch(cloud, (JOB,)) as watch:
            # when a job names its own image, built FROM the worker image with examples/digits in it, and the same
            # entrypoint as on a fleet of processes (the agent in the job's container runs it)
            RingfleetClient(cloud.broker_url).submit(
                digits_job(
                    job_id=JOB,
                    image=job_image,
                    entrypoint=["python", "examples/digits/train.py"],
                    min_workers=2,
                    max_workers=2,
                    instance_types=["g5.12xlarge"],
                    slots_per_instance=2,
                    total_steps=STEPS,
                    hyperparameters={"steps": STEPS, "commit-every": 1, "step-delay": STEP_S},
                )
            )
            wait_ticking(cloud, SCALER, lambda: watch.state(JOB) is JobState.RUNNING, 300, "the job to run")
            members = sorted(watch.job(JOB).members)
            wait_ticking(
                cloud,
                SCALER,
                lambda: all(_trained_in_ring_of(logs / f"{i}.log", 4) for i in members),
                240,
                "both instances' job containers to train in one ring of four",
            )
            # then each instance runs its agent in the worker image, with the engine's socket, and the job in the
            # job's image beside it: the agent's program (never the image's entrypoint), with no socket, no
            # privilege, no capability
            for instance in members:
                (agent,) = _containers("agent", instance)
                assert agent["Config"]["Image"] == worker and _sockets(agent)
                (job,) = _containers("job", instance)
                assert job["Config"]["Image"] == job_image
                assert job["Config"]["Entrypoint"] == ["python", "-m", "training_worker"]
                assert not job["Config"]["Cmd"]
                assert not _sockets(job), job["Mounts"]
                assert job["HostConfig"]["Privileged"] is False and job["HostConfig"]["CapDrop"] == ["ALL"]
                assert job["HostConfig"]["NetworkMode"] == "host"
                # with a process per slot the job asks of its 4-GPU instance: the agent and one slot beside it
                top = subprocess.run(["docker", "top", job["Id"]], capture_output=True, text=True, check=True).stdout
                ours = [line.split("-m ")[-1] for line in top.splitlines() if "-m training_worker" in line]
                assert sorted(ours) == ["training_worker", "training_worker.slot"], top
            # when one instance gets a spot notice
            leaving, staying = members
            emulator.interrupt(leaving, grace_s=10)
            # then its job container leaves at a step boundary (status 0) and the other trains on without it
            wait_ticking(
                cloud,
                SCALER,
                lambda: re.search(r"job's container \w+ ended with status 0", (logs / f"{leaving}.log").read_text()),
                90,
                "the notified job container to leave",
            )
            assert "finished: stopped at step" in (logs / f"{leaving}.log").read_text()
            events = (parse_training_event(line) for line in events_file(logs, leaving).read_text().splitlines())
            left = [e for e in events if isinstance(e, RankLeft)]
            assert len(left) == 2 and left[0].reached == left[1].reached, left  # both its slots, at one boundary
            wait_ticking(
                cloud,
                SCALER,
                lambda: f"shrank to 2 at step {left[0].reached}" in (logs / f"{staying}.log").read_text(),
                60,
                "the other instance to train on alone",
            )
            # and the job ends SUCCEEDED
            wait_ticking(cloud, SCALER, lambda: watch.job(JOB).is_final, 360, "the job to end")
            job_now = watch.job(JOB)
            assert job_now.state is JobState.SUCCEEDED, (job_now.state, job_now.incidents)
    finally:
        emulator.stop()
    # and nothing of the instances is left running
    assert not [c for i in emulator.seen for c in _containers("job", i) + _containers("agent", i)]
