"""plan_retention: which of a job's durable checkpoints to delete — keep the newest K, every Nth, and the protected."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["plan_retention"]


def plan_retention(
    steps: Iterable[int], *, keep_last: int, keep_every: int = 0, protected: Iterable[int | None] = ()
) -> list[int]:
    """The steps to delete, oldest first.

    Kept: the newest ``keep_last`` steps; every step that is a multiple of ``keep_every`` (0: none); and the
    ``protected`` ones (the job's newest durable checkpoint, the one a restart is loading) whatever their age.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, not {keep_last}")
    if keep_every < 0:
        raise ValueError(f"keep_every must be 0 (off) or positive, not {keep_every}")
    ordered = sorted(set(steps))
    keep = set(ordered[-keep_last:]) | {s for s in protected if s is not None}
    if keep_every:
        keep |= {s for s in ordered if s % keep_every == 0}
    return [s for s in ordered if s not in keep]
