"""`ringfleet local up` runs the fleet too: every instance the fleet scaler launches boots an agent process, whose
log `ringfleet logs` shows; `ringfleet local down` leaves no agent (nor anything an agent started) running.

A module of its own: the background local cloud consumes the jobs queue, which no other local cloud may share
while it runs.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from ringfleet.contracts.broker import JOBS_QUEUE
from tests.conftest import ROOT, purge_queue
from tests.e2e.support import wait_until
from tests.e2e.test_local_cloud import ringfleet

pytestmark = pytest.mark.e2e


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_local_up_boots_an_agent_per_launched_instance_and_down_leaves_none_behind(
    tmp_path: Path, broker_url: str
) -> None:
    # given a local cloud started in the background from the repository
    purge_queue(broker_url, JOBS_QUEUE)
    up = ringfleet("local", "up", state_dir=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    assert f"{tmp_path.resolve()}/workers/<instance-id>.log" in up.stdout
    job_id = f"e2e-agents-{uuid.uuid4().hex[:8]}"
    agents: dict[str, int] = {}
    try:
        # when a job is submitted and the fleet scaler launches instances for it
        submitted = ringfleet(
            "submit",
            "examples/digits/job.yaml",
            "--set",
            f"job_id={job_id}",
            "--set",
            "min_workers=1",
            "--set",
            "max_workers=2",
            state_dir=tmp_path,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr

        def booted() -> bool:
            fleet = tmp_path / "fleet.json"
            agents.update(json.loads(fleet.read_text())["agents"] if fleet.is_file() else {})
            return len(agents) >= 2 and all((tmp_path / "workers" / f"{i}.log").is_file() for i in agents)

        # then each instance boots an agent process of its own, logging under the state dir
        wait_until(booted, timeout=60, what="an agent per launched instance")
        assert all(_group_alive(pid) for pid in agents.values())
        status = ringfleet("local", "status", state_dir=tmp_path)
        assert f"working in {ROOT}" in status.stdout and str(tmp_path.resolve() / "workers") in status.stdout
        # and `ringfleet logs` shows what the job's agents wrote, line by line, prefixed with their instance
        wait_until(
            lambda: any(
                f"[{i}] " in ringfleet("logs", job_id, "--tenant", "acme", state_dir=tmp_path).stdout for i in agents
            ),
            timeout=30,
            what="the job's agent logs",
            every=1.0,
        )
    finally:
        down = ringfleet("local", "down", state_dir=tmp_path)
    # and once the local cloud is down, no agent (nor anything it started) is left running
    assert down.returncode == 0 and "down" in down.stdout
    assert agents and not any(_group_alive(pid) for pid in agents.values())
