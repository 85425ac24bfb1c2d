"""Backup's ports: checkpoint objects in S3 and the checkpoints table (the catalog of what was verified)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointManifest

__all__ = [
    "CheckpointCatalog",
    "CheckpointObjects",
    "CheckpointRecord",
    "CheckpointStatus",
    "ShardChanged",
    "StoredShard",
]


@dataclass(frozen=True)
class StoredShard:
    """What S3 says of an object, from its metadata alone (the body is never read)."""

    size: int
    #: S3's SHA-256 checksum of the object ("" when it was stored without one).
    checksum_sha256: str
    #: The content that was verified: a copy is made only while the object still has it (CopySourceIfMatch).
    etag: str
    #: The version that was verified, in a versioned bucket: a copy takes exactly this version, whatever the key
    #: holds by then. None in a bucket without versioning.
    version_id: str | None = None


class ShardChanged(Exception):
    """A shard is no longer the object that was verified: its copy was refused, or came out different."""


class CheckpointObjects(Protocol):
    def read(self, bucket: str, key: str, *, max_bytes: int, version_id: str | None = None) -> bytes:
        """An object's body (of ``version_id`` when given); raises ValueError when it is larger than ``max_bytes``."""
        ...

    def stored(self, bucket: str, key: str) -> StoredShard | None:
        """Size, S3 checksum, ETag and version of an object as stored, or None when it does not exist."""
        ...

    def copy_checkpoint(
        self,
        manifest: CheckpointManifest,
        manifest_body: bytes,
        verified: Mapping[str, StoredShard],
        source_bucket: str,
        target_bucket: str,
    ) -> None:
        """Server-side copy of every shard, each exactly the version in ``verified`` (by shard name: its VersionId,
        and only while its ETag is the verified one), then
        ``manifest_body`` (last, so a copy exists only once complete); raises ShardChanged when a shard's copy is
        refused or differs from the manifest."""
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
