"""`ringfleet status` and `ringfleet events` for a job whose script failed: the reason on one line in the table, the
traceback's tail under its event."""

from __future__ import annotations

from typing import Any

import pytest
from ringfleet_cli import attach
from ringfleet_cli.main import main
from ringfleet_cli.output import one_line
from ringfleet_client import RingfleetClient

from ringfleet.contracts import WorkerFailed
from tests.builders import RecoveryWorld, instance, later
from tests.doubles import InMemoryJobRepository

pytestmark = pytest.mark.unit

TRACEBACK = (
    "entrypoint 'python examples/digits/train.py' exited with status 1\n"
    "Traceback (most recent call last):\n"
    '  File "examples/digits/train.py", line 40, in <module>\n'
    "    main()\n"
    "ZeroDivisionError: division by zero"
)


class Clock:
    def now(self) -> Any:
        return later(5)


@pytest.fixture
def failed_job(monkeypatch: pytest.MonkeyPatch) -> InMemoryJobRepository:
    """A job of tenant acme whose script failed twice with max_restarts 1: FAILED."""
    w = RecoveryWorld.of(Clock(), members=2, max_workers=2, max_restarts=1)
    for generation in (1, 2):
        w.service.on_worker_failed(
            WorkerFailed(
                job_id="digits-demo",
                instance_id=instance(1),
                generation=generation,
                rank=0,
                step=3,
                reason=TRACEBACK,
                scope="script",
                sent_at=later(generation),
            )
        )
    monkeypatch.setattr(attach, "job_client", lambda: RingfleetClient("amqp://unused", w.jobs))
    return w.jobs


def test_status_shows_why_a_failed_job_failed_on_one_line(
    failed_job: InMemoryJobRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    # when the tenant asks for the job's status
    assert main(["status", "digits-demo", "--tenant", "acme"]) == 0
    # then its row says FAILED and why: what failed and the exception, on the row's one line
    _header, row = capsys.readouterr().out.splitlines()
    assert "FAILED" in row
    assert row.endswith(
        "failed: entrypoint 'python examples/digits/train.py' exited with status 1 ... "
        "ZeroDivisionError: division by zero"
    )


def test_events_show_each_script_failure_with_its_traceback_tail(
    failed_job: InMemoryJobRepository, capsys: pytest.CaptureFixture[str]
) -> None:
    # when the tenant lists the job's events
    assert main(["events", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    # then each script failure is an event naming the instance, followed by its traceback's tail, indented
    failures = [line for line in out.splitlines() if " script-failed " in line]
    assert len(failures) == 2
    assert f"gen 1 script-failed on {instance(1)} failure 1 (max_restarts 1)" in failures[0]
    assert out.count("    ZeroDivisionError: division by zero") == 2
    assert '    File "examples/digits/train.py", line 40, in <module>' in out
    # and the restart and the end are events too
    assert " gen 2 script-restarted " in out and " gen 2 failed script failed 2 times (max_restarts 1)" in out
    assert out.index(" gen 2 failed ") > out.index(" gen 2 script-failed "), "events keep the order they happened in"


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        ("no module named torch", "no module named torch"),
        ("Traceback (most recent call last):\n  File 'x.py'\nKeyError: 'lr'", "KeyError: 'lr'"),
        ("exited with status 2\n\nRuntimeError: x", "exited with status 2 ... RuntimeError: x"),
        ("x" * 300, "x" * 117 + "..."),
    ],
)
def test_a_reason_is_shown_on_one_line_of_bounded_width(reason: str, shown: str) -> None:
    assert one_line(reason) == shown
