"""plan_retention: which of a job's durable checkpoints to delete — keep the newest K, every Nth, and the protected.

Only verified (DURABLE) checkpoints count and only they are ever deleted: a QUARANTINED one — a forged manifest
claiming a huge step, say — neither takes a place among the newest K nor pushes a real one out, and the newest
durable checkpoint is kept whatever else the catalog holds.
"""

from __future__ import annotations

from collections.abc import Iterable

from ringfleet.backup.ports import CheckpointRecord, CheckpointStatus

__all__ = ["plan_retention"]


def plan_retention(
    records: Iterable[CheckpointRecord],
    *,
    keep_last: int,
    keep_every: int = 0,
    protected: Iterable[int | None] = (),
) -> list[int]:
    """The steps of durable checkpoints to delete, oldest first.

    Kept: the newest ``keep_last`` durable steps (so always the newest durable one); every step that is a multiple
    of ``keep_every`` (0: none); and the ``protected`` ones (the job's newest durable checkpoint as the job records
    it, the one a restart is loading) whatever their age. Records of any other status are left alone.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, not {keep_last}")
    if keep_every < 0:
        raise ValueError(f"keep_every must be 0 (off) or positive, not {keep_every}")
    ordered = sorted({r.step for r in records if r.status is CheckpointStatus.DURABLE})
    keep = set(ordered[-keep_last:]) | {s for s in protected if s is not None}
    if keep_every:
        keep |= {s for s in ordered if s % keep_every == 0}
    return [s for s in ordered if s not in keep]
