"""plan_retention: the newest K and every Nth durable checkpoint are kept, never the newest durable one or one being
restored, and a quarantined manifest (a forged one claiming a huge step) neither counts nor pushes a real one out."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringfleet.backup.ports import CheckpointRecord, CheckpointStatus
from ringfleet.backup.retention import plan_retention

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DURABLE, QUARANTINED, RETIRED = CheckpointStatus.DURABLE, CheckpointStatus.QUARANTINED, CheckpointStatus.RETIRED


def records(steps: list[int], status: CheckpointStatus = DURABLE) -> list[CheckpointRecord]:
    return [CheckpointRecord("job", s, 1, status, f"s3://b/jobs/job/ckpt/{s:012d}/", 1, T0) for s in steps]


def test_keeps_the_newest_k_and_every_nth() -> None:
    steps = [40, 80, 120, 160, 200, 240]
    assert plan_retention(records(steps), keep_last=2, keep_every=120) == [40, 80, 160]


def test_never_deletes_the_newest_durable_or_the_one_a_restart_loads() -> None:
    # given the newest durable checkpoint is older than the newest steps (a newer one arrived out of order)
    assert plan_retention(records([10, 20, 30, 40]), keep_last=1, protected=[20, 10]) == [30]


def test_a_quarantined_manifest_with_a_huge_step_neither_counts_nor_pushes_the_newest_durable_one_out() -> None:
    # given durable checkpoints up to step 300, and a forged manifest claiming the largest step there is, quarantined
    catalog = records([100, 200, 300]) + records([10**12 - 1], QUARANTINED)
    # when retention keeps one
    doomed = plan_retention(catalog, keep_last=1)
    # then the newest durable (300) stays, the older durable ones go, and the quarantined one is not touched
    assert doomed == [100, 200]


def test_only_durable_checkpoints_are_ever_deleted() -> None:
    catalog = records([5, 6], QUARANTINED) + records([7], RETIRED) + records([50, 60])
    assert plan_retention(catalog, keep_last=1) == [50]


def test_refuses_keeping_nothing() -> None:
    with pytest.raises(ValueError, match="keep_last"):
        plan_retention(records([1]), keep_last=0)


@given(
    durable=st.sets(st.integers(min_value=0, max_value=10**6), max_size=40),
    other=st.sets(st.integers(min_value=0, max_value=10**12 - 1), max_size=5),
    keep_last=st.integers(min_value=1, max_value=5),
    protected=st.lists(st.integers(min_value=0, max_value=10**6), max_size=2),
)
def test_deleted_steps_are_durable_never_newest_k_nor_protected(
    durable: set[int], other: set[int], keep_last: int, protected: list[int]
) -> None:
    others = other - durable
    catalog = records(sorted(durable)) + records(sorted(others), QUARANTINED)
    doomed = plan_retention(catalog, keep_last=keep_last, protected=protected)
    assert set(doomed) <= durable
    assert not set(doomed) & set(sorted(durable)[-keep_last:])
    assert not set(doomed) & set(protected)
    assert len(durable) - len(doomed) >= min(len(durable), keep_last)
