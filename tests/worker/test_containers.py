"""What the agent asks of the Docker engine for a job's container (training_worker.containers): the agent's program
from the job's image, and nothing that reaches the instance beyond what the job needs. The e2e test
(tests/e2e/test_containers.py) runs it for real; here, what only a GPU instance would show."""

from __future__ import annotations

from pathlib import Path

import pytest

from ringfleet.contracts.messages import CONTAINER_INSTANCE_LABEL, CONTAINER_ROLE_LABEL
from training_worker.containers import AGENT, FORWARDED, JobContainer

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
