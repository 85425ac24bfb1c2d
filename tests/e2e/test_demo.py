"""`ringfleet demo --fast`, the README's first command in its short form: spot-interrupted training end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]


def test_demo_recovers_each_incident_once_and_ends_with_the_uninterrupted_model(
    broker_url: str, tmp_path: Path
) -> None:
    # given a fresh local cloud brought up by the demo itself
    # when a user runs the short demo: a 3-worker job, a spot interruption with notice, a hard kill, every cloud
    # event delivered twice
    out = subprocess.run(
        [sys.executable, "-m", "ringfleet_cli.main", "demo", "--fast", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        env={**os.environ, "RINGFLEET_BROKER_URL": broker_url},
    )
    # then it exits 0, which it does only if each incident caused exactly one restart within its loss budget and
    # the final parameters match those of an uninterrupted run with the same global batches
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]
    assert "Every incident was recovered exactly once" in out.stdout
    # and it showed progress and incidents as they happened, through the real handlers
    assert re.search(r"step +\d+ +loss [\d.]+ +world 3 +generation 1", out.stdout)
    assert "INCIDENT 1: spot interruption warning" in out.stdout
    # (the workers may see the notice in the instance metadata and checkpoint before EventBridge's warning arrives)
    assert re.search(r"NodeRecoveryFunction: notice: (checkpoint requested|checkpoint already taken)", out.stdout)
    # and with notice the two others never stopped: they trained on without the leaving worker at once
    assert re.search(
        r"generation 1: 2 workers train on at once from step \d+, without the lost or leaving one", out.stdout
    )
    assert "INCIDENT 2: hard kill" in out.stdout
    assert "WorkerEventsFunction: lost without notice: reconfigured at generation" in out.stdout
    # and the report has a row per incident: no step lost with notice, at most one (a commit per step) without
    report = (tmp_path / "report.md").read_text()
    rows = re.findall(
        r"^\| (\d) \| ([a-z ]+) \| i-[0-9a-f]+ \| ([\d.]+) s \| ([\d.]+) s \| (\d+) \| (\d+) \|", report, re.M
    )
    assert [(n, cause) for n, cause, *_ in rows] == [("1", "spot interruption"), ("2", "hard kill")], report
    assert int(rows[0][4]) == 0 and int(rows[1][4]) <= 1
    # and the run's goodput, which the demo checks against the short run's threshold
    goodput = re.search(r"^Goodput ([\d.]+) %", report, re.M)
    assert goodput is not None and float(goodput[1]) >= 80.0, report
    assert int(rows[0][5]) >= 4, "every cloud event of the interruption arrived twice"
    assert "Final parameters match the uninterrupted run's (allclose)." in report
    assert re.search(r"Final accuracy on held-out digits: \d+\.\d %; uninterrupted run .*: \d+\.\d %", report)
    # and the timeline plot was written
    png = tmp_path / "timeline.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
