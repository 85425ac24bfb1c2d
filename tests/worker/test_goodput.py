"""The heartbeat's goodput: the share of wall time a worker spent on new steps."""

from __future__ import annotations

import pytest

from training_worker.runtime.progress import GoodputMeter

pytestmark = pytest.mark.worker


def train(meter: GoodputMeter, steps: range, start: float, *, step_s: float = 1.0, after_pause: bool = False) -> float:
    """Steps ``steps`` one ``step_s`` apart from ``start``; the first is taken right after a pause when asked."""
    since: float | None = None if after_pause else start
    now = start
    for step in steps:
        now += step_s
        meter.stepped(step, since, now)
        since = now
    return now


def test_uninterrupted_training_is_all_goodput() -> None:
    meter = GoodputMeter(now=0.0)
    end = train(meter, range(1, 11), 0.0)
    assert meter.window(end) == pytest.approx(1.0)


def test_a_pause_for_a_new_ring_is_not_goodput() -> None:
    meter = GoodputMeter(now=0.0)
    end = train(meter, range(1, 6), 0.0)  # steps 1-5 in 5 s
    # then 5 s waiting for the next generation (the runtime forgets when it last stepped), and steps 6-10
    end = train(meter, range(6, 11), end + 5.0, after_pause=True)
    # the pause, and the step whose start the worker could not see, are not counted: 9 productive s of 15
    assert meter.window(end) == pytest.approx(9 / 15)


def test_steps_redone_after_a_rollback_are_not_goodput() -> None:
    meter = GoodputMeter(now=0.0)
    end = train(meter, range(1, 11), 0.0)
    assert meter.window(end) == pytest.approx(1.0)
    # restored to the commit of step 7: steps 8-10 are done again, then 11-12 are new
    end = train(meter, range(8, 13), end)
    assert meter.window(end) == pytest.approx(2 / 5)


def test_each_heartbeat_reports_its_own_interval() -> None:
    meter = GoodputMeter(now=0.0)
    end = train(meter, range(1, 4), 0.0)
    assert meter.window(end) == pytest.approx(1.0)
    # nothing happens for 10 s (the ring is gone): that heartbeat says 0, not the average since the start
    assert meter.window(end + 10.0) == 0.0
    assert meter.window(end + 10.0) is None  # no time passed: nothing to say
