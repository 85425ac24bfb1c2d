"""A test run leaves no process behind (tests/reaper.py, hooked in tests/conftest.py): not when a test fails after
starting a moto server it never stops, not when it times out, not when a process it started orphaned its child.

Each case runs a pytest session of its own, in a subprocess, with tests/conftest.py as its only plugin; the inner
test writes the pid it leaks to a file, and once that session has ended the pid must no longer run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.reaper import MARKER, alive, leftovers, mark_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LEAKS_A_MOTO_SERVER_AND_FAILS = """
from ringfleet_local.cloud import LocalCloud

def test_leaks(tmp_path):
    cloud = LocalCloud({template!r}, route=False).start()  # never stopped
    open({pids!r}, "w").write(str(cloud._moto.pid))
    assert False, "fails with the moto server still running"
"""

LEAKS_A_MOTO_SERVER_AND_TIMES_OUT = """
import time

import pytest
from ringfleet_local.cloud import LocalCloud

@pytest.mark.timeout(20)
def test_hangs():
    cloud = LocalCloud({template!r}, route=False).start()
    open({pids!r}, "w").write(str(cloud._moto.pid))
    time.sleep(120)
"""

ORPHANS_A_GRANDCHILD = """
import subprocess

def test_orphans():
    # the shell starts a sleep in the background and exits: the sleep's parent is gone
    out = subprocess.run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
    open({pids!r}, "w").write(out.stdout.strip())
"""


def run_session(tmp_path: Path, body: str, *, reaper: bool = True) -> tuple[subprocess.CompletedProcess[str], int]:
    """Runs ``body`` as a test module in a pytest session of its own; returns the session and the pid it leaked."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    pids = tmp_path / "leaked.pid"
    module = tmp_path / "test_inner.py"
    module.write_text(textwrap.dedent(body.format(template=str(ROOT / "template.yaml"), pids=str(pids))))
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    plugins = ["-p", "tests.conftest"] if reaper else []
    session = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins, "-c", "pytest.ini", module.name],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pids.is_file(), f"the inner test did not get to start its process:\n{session.stdout}\n{session.stderr}"
    return session, int(pids.read_text())


@pytest.mark.parametrize(
    "body", [LEAKS_A_MOTO_SERVER_AND_FAILS, LEAKS_A_MOTO_SERVER_AND_TIMES_OUT], ids=["failed", "timed-out"]
)
def test_a_moto_server_a_test_never_stopped_is_gone_when_the_session_ends(tmp_path: Path, body: str) -> None:
    # when a test starts the local cloud's moto server and fails or times out without stopping it
    session, pid = run_session(tmp_path, body)
    # then the session failed, and its moto server no longer runs once the session is over
    assert session.returncode == 1, session.stdout + session.stderr
    assert not alive(pid), f"moto server {pid} outlived its test session"
    # (named among what the reaper ended: the warm interpreter it was forked from is another, ringfleet_local.warm)
    assert re.search(rf"killed \d+ process\(es\) the tests left running: (.*, )?{pid} \(", session.stdout), (
        session.stdout
    )


def test_an_orphaned_grandchild_is_found_and_ended(tmp_path: Path) -> None:
    # given, without the reaper, an orphaned grandchild outlives the session (the check below can fail)
    _, control = run_session(tmp_path / "control", ORPHANS_A_GRANDCHILD, reaper=False)
    try:
        assert alive(control), "the control orphan died by itself: the case proves nothing"
    finally:
        os.kill(control, signal.SIGKILL)
    # when the same session runs with the reaper
    session, pid = run_session(tmp_path / "reaped", ORPHANS_A_GRANDCHILD)
    # then the orphan, adopted by init and no longer a descendant, is found by the run's token and ended
    assert session.returncode == 0, session.stdout + session.stderr
    assert not alive(pid), f"orphan {pid} outlived its test session"


def test_the_orphan_of_a_nested_run_is_the_outer_runs_and_no_other_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a run's token, and a run nested in it (a pytest-xdist worker under its controller) marking its own
    monkeypatch.setenv(MARKER, "outer-run")
    nested = mark_run()
    assert nested.startswith("outer-run/") and os.environ[MARKER] == nested

    # when the nested run leaves an orphan behind (killed before it could reap), and another run leaves one too
    def orphan(token: str) -> int:
        out = subprocess.run(
            ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"],
            env={**os.environ, MARKER: token},
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout.strip())

    ours, theirs = orphan(nested), orphan("outer-run-2/worker")
    try:
        # then the outer run finds its nested run's orphan by its token (it is no descendant any more), and not the
        # other run's, whose token only begins alike; and the nested run finds its own
        nobody = 2**22 + 7  # no such process: only tokens decide
        assert [p.pid for p in leftovers("outer-run", root=nobody)] == [ours]
        assert [p.pid for p in leftovers(nested, root=nobody)] == [ours]
    finally:
        for pid in (ours, theirs):
            os.kill(pid, signal.SIGKILL)
