"""What the agent asks of the Docker engine for a job's container (training_worker.containers): the agent's program
from the job's image, and nothing that reaches the instance beyond what the job needs; and nothing of a previous
job's container left running beside the next. The e2e test (tests/e2e/test_containers.py) runs the whole path; here,
what only a GPU instance would show, and leftovers on this machine's Docker engine (.ci/run starts it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ringfleet_local import images

from ringfleet.contracts.messages import CONTAINER_INSTANCE_LABEL, CONTAINER_ROLE_LABEL
from training_worker.containers import AGENT, FORWARDED, JobContainer, remove_leftovers

pytestmark = pytest.mark.worker


def test_on_a_gpu_instance_the_job_container_gets_every_gpu_and_no_privilege(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in FORWARDED:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RINGFLEET_CONTROL_USER", "ringfleet-control")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the instance's")
    cache = tmp_path / "cache"
    options = JobContainer(
        "acme/train:1", {"RINGFLEET_JOB_ID": "j1"}, instance_id="i-0123456789abcdef0", shared=[cache], gpus=True
    ).options()
    # the agent's program, whatever the image's own ENTRYPOINT
    assert (options["entrypoint"], options["command"]) == (list(AGENT), [])
    # every GPU of the instance (docker run --gpus all), shared memory sized, not the host's IPC namespace
    (gpus,) = options["device_requests"]
    assert gpus["Count"] == -1 and gpus["Capabilities"] == [["gpu"]]
    assert options["shm_size"] > 0 and "ipc_mode" not in options
    # no capability, no new privilege, no engine socket: only the folders it shares with the agent
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    assert "privileged" not in options
    assert [(m["Source"], m["Target"]) for m in options["mounts"]] == [(str(cache), str(cache))]
    # the variables it is handed and the forwarded ones, never the rest of the agent's environment
    assert options["environment"] == {"RINGFLEET_CONTROL_USER": "ringfleet-control", "RINGFLEET_JOB_ID": "j1"}
    assert options["labels"] == {CONTAINER_INSTANCE_LABEL: "i-0123456789abcdef0", CONTAINER_ROLE_LABEL: "job"}


def test_on_a_cpu_instance_it_asks_for_no_gpu() -> None:
    options = JobContainer("acme/train:1", {}, instance_id="i-0123456789abcdef0").options()
    assert options["device_requests"] is None and options["mounts"] == []


def _sleeper(instance: str, role: str) -> str:
    """A running container labelled as ``role`` of ``instance`` (the local base image, sleeping)."""
    labels = [f"--label={CONTAINER_INSTANCE_LABEL}={instance}", f"--label={CONTAINER_ROLE_LABEL}={role}"]
    return subprocess.run(
        ["docker", "run", "-d", *labels, "--entrypoint", "sleep", images.base_image(), "120"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def _running(container: str) -> bool:
    found = subprocess.run(["docker", "ps", "-q", "--no-trunc"], capture_output=True, text=True, check=True)
    return container in found.stdout.split()


def test_an_agent_removes_the_job_containers_a_previous_agent_of_its_instance_left() -> None:
    images.docker_ready()
    # given a job container an agent of this instance left running (it died), and containers that are not its
    left = _sleeper("i-00000000000000a01", "job")
    others = [_sleeper("i-00000000000000a02", "job"), _sleeper("i-00000000000000a01", "agent")]
    try:
        # when the instance's next agent starts
        removed = remove_leftovers("i-00000000000000a01")
        # then the leftover is gone, and only it
        assert [left[:12]] == removed and not _running(left)
        assert all(_running(c) for c in others)
    finally:
        subprocess.run(["docker", "rm", "-f", left, *others], capture_output=True)
