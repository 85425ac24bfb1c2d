"""Backup's ports: checkpoint objects in S3 and the checkpoints table (the catalog of what was verified)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointManifest

__all__ = ["CheckpointCatalog", "CheckpointObjects", "CheckpointRecord", "CheckpointStatus", "ShardDigest"]


@dataclass(frozen=True)
class ShardDigest:
    size: int
    sha256: str


class CheckpointObjects(Protocol):
    def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        """An object's body; raises ValueError when it is larger than ``max_bytes``."""
        ...

    def digest(self, bucket: str, key: str) -> ShardDigest | None:
        """Size and sha256 of an object as stored, or None when it does not exist."""
        ...

    def copy_checkpoint(self, manifest: CheckpointManifest, source_bucket: str, target_bucket: str) -> None:
        """Server-side copy of every shard, then the manifest (last, so a copy exists only once complete)."""
        ...

    def delete_checkpoint(self, bucket: str, job_id: str, step: int) -> None:
        """Deletes the manifest first (so the checkpoint stops existing), then its shards."""
        ...


class CheckpointStatus(StrEnum):
    DURABLE = "DURABLE"
    QUARANTINED = "QUARANTINED"
    RETIRED = "RETIRED"


@dataclass(frozen=True)
class CheckpointRecord:
    job_id: str
    step: int
    generation: int
    status: CheckpointStatus
    #: Where it is kept: the backup copy for DURABLE ones, the original for QUARANTINED ones.
    uri: str
    size_bytes: int
    recorded_at: datetime
    reason: str = ""


class CheckpointCatalog(Protocol):
    def put(self, record: CheckpointRecord) -> None: ...

    def list(self, job_id: str) -> list[CheckpointRecord]:
        """A job's checkpoints, oldest step first."""
        ...


# -- fleet scaling (issue 5) ------------------------------------------------------------------------------------------
