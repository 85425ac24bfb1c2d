"""plan_retention: the newest K and every Nth are kept, and never the newest durable one or one being restored."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringfleet.backup.retention import plan_retention


def test_keeps_the_newest_k_and_every_nth() -> None:
    steps = [40, 80, 120, 160, 200, 240]
    assert plan_retention(steps, keep_last=2, keep_every=120) == [40, 80, 160]


def test_never_deletes_the_newest_durable_or_the_one_a_restart_loads() -> None:
    # given the newest durable checkpoint is older than the newest steps (a newer one arrived out of order)
    assert plan_retention([10, 20, 30, 40], keep_last=1, protected=[20, 10]) == [30]


def test_refuses_keeping_nothing() -> None:
    with pytest.raises(ValueError, match="keep_last"):
        plan_retention([1], keep_last=0)


@given(
    steps=st.sets(st.integers(min_value=0, max_value=10**6), max_size=40),
    keep_last=st.integers(min_value=1, max_value=5),
    protected=st.lists(st.integers(min_value=0, max_value=10**6), max_size=2),
)
def test_deleted_steps_are_never_newest_k_nor_protected(steps: set[int], keep_last: int, protected: list[int]) -> None:
    doomed = plan_retention(steps, keep_last=keep_last, protected=protected)
    assert set(doomed) <= steps
    assert not set(doomed) & set(sorted(steps)[-keep_last:])
    assert not set(doomed) & set(protected)
    assert len(steps) - len(doomed) >= min(len(steps), keep_last)
