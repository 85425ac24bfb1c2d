"""What the demo reads off the workers' logs: progress with its own time stamp, rings formed, shrinks, failures."""

from __future__ import annotations

from datetime import datetime

import pytest
from ringfleet_local.worker_logs import parse_line

pytestmark = pytest.mark.unit


def test_a_progress_line_is_timed_by_the_worker_and_a_missing_loss_is_not_a_number() -> None:
    stamp = "2026-11-29 20:24:11,329"
    line = parse_line("i-1", f"{stamp} step 42 loss - samples/s 2000 world 2 rank 1 generation 3", read_at=0.0)
    assert line is not None and line.kind == "progress"
    assert (line.int("step"), line.int("world"), line.int("rank"), line.int("generation")) == (42, 2, 1, 3)
    assert line.fields["loss"] == "-"
    assert line.at == datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").astimezone().timestamp()


def test_a_shrink_is_read_as_the_survivors_going_on() -> None:
    text = (
        "2026-11-29 20:27:16,868 training_worker INFO generation 1: shrank to 2 at step 49 without the leaving "
        "rank(s) [2]; training on as rank 0"
    )
    line = parse_line("i-1", text, read_at=0.0)
    assert line is not None and line.kind == "shrank"
    assert (line.int("generation"), line.int("world"), line.int("step")) == (1, 2, 49)
