"""`ringfleet demo`, the README's first command, runs end to end and says what happened."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def test_demo_routes_each_event_to_its_handler_and_backs_up_the_checkpoint(broker_url: str) -> None:
    # given a fresh local cloud brought up by the demo itself
    # when a user runs the demo
    out = subprocess.run(
        [sys.executable, "-m", "ringfleet.cli", "demo", "--fast"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "RINGFLEET_BROKER_URL": broker_url},
    )
    # then it exits 0 and shows each event handled by its function: admitted, backed up, ignored (no such job)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "delivered to JobIntakeFunction via Jobs (MQ)" in out.stdout
    assert "info: checkpoint backed-up digits-demo" in out.stdout
    assert "info: ignored: instance belongs to no job" in out.stdout
    assert "Every event reached the handler template.yaml wires to it." in out.stdout
