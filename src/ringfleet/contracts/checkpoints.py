"""Checkpoint layout in S3 and its manifest: written last, the manifest is what makes a checkpoint exist."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from ringfleet.contracts.scalars import (
    BUCKET_PATTERN,
    JOB_ID_PATTERN,
    Generation,
    JobId,
    MetadataKey,
    MetadataValue,
    Sha256,
    SizeBytes,
    Step,
    WorldSize,
)

__all__ = [
    "MANIFEST_NAME",
    "MAX_SHARDS",
    "CheckpointManifest",
    "ShardEntry",
    "checkpoint_prefix",
    "checkpoint_uri",
    "composite_checksum",
    "encode_manifest",
    "full_object_checksum",
    "manifest_key",
    "parse_checkpoint_uri",
    "parse_manifest",
    "parse_manifest_key",
    "same_s3_checksum",
]

MANIFEST_NAME = "manifest.json"
MAX_SHARDS = 4096
_MAX_STEP = 10**12 - 1  # twelve digits
_JOB_ID = re.compile(JOB_ID_PATTERN)
# Steps are zero-padded so that S3 lists a job's checkpoints oldest first.
_MANIFEST_KEY = re.compile(rf"jobs/({JOB_ID_PATTERN})/ckpt/(\d{{12}})/{re.escape(MANIFEST_NAME)}")
_CHECKPOINT_URI = re.compile(rf"s3://({BUCKET_PATTERN})/jobs/({JOB_ID_PATTERN})/ckpt/(\d{{12}})/")

ShardName = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9._-]{1,128}$")]
#: S3's SHA-256 checksum of an object: base64 of 32 bytes, and ``-N`` when it is the composite of N parts.
#: Who wrote a manifest: the writing worker's instance id (``i-...`` in EC2, ``local-<pid>`` on a laptop).
WriterId = Annotated[str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
S3Sha256Checksum = Annotated[
    str, StringConstraints(strict=True, pattern=r"^[A-Za-z0-9+/]{43}=(-[1-9][0-9]{0,3}|-10000)?$")
]


def full_object_checksum(sha256_hex: str) -> str:
    """S3's full-object SHA-256 checksum of bytes whose sha256 is ``sha256_hex``: the same digest, in base64."""
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode()


def composite_checksum(data: bytes | memoryview, part_size: int) -> str:
    """S3's composite SHA-256 checksum of ``data`` uploaded in parts of ``part_size`` bytes (the last one shorter):
    the sha256 of the parts' sha256 digests, in base64, then ``-<parts>``."""
    if part_size < 1:
        raise ValueError(f"part_size must be positive, not {part_size}")
    view = memoryview(data)
    digests = [hashlib.sha256(view[i : i + part_size]).digest() for i in range(0, max(len(view), 1), part_size)]
    return f"{base64.b64encode(hashlib.sha256(b''.join(digests)).digest()).decode()}-{len(digests)}"


def same_s3_checksum(a: str, b: str) -> bool:
    """Whether two S3 SHA-256 checksums name the same object: equal digests, and equal part counts where both
    carry one (S3's HeadObject may report a composite without its ``-N``; the digest alone already differs between
    a composite and a full-object checksum, and between composites of different parts)."""
    digest_a, _, parts_a = a.partition("-")
    digest_b, _, parts_b = b.partition("-")
    return bool(digest_a) and digest_a == digest_b and (not parts_a or not parts_b or parts_a == parts_b)


def checkpoint_prefix(job_id: str, step: int) -> str:
    """The S3 key prefix of a checkpoint: ``jobs/<job>/ckpt/<step:012d>/``."""
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"job_id {job_id!r} does not match {JOB_ID_PATTERN}")
    if isinstance(step, bool) or not 0 <= step <= _MAX_STEP:
        raise ValueError(f"step {step!r} is not in 0..{_MAX_STEP}")
    return f"jobs/{job_id}/ckpt/{step:012d}/"


def manifest_key(job_id: str, step: int) -> str:
    """The S3 key of a checkpoint's manifest."""
    return checkpoint_prefix(job_id, step) + MANIFEST_NAME


def checkpoint_uri(bucket: str, job_id: str, step: int) -> str:
    """``s3://<bucket>/jobs/<job>/ckpt/<step:012d>/``: how messages refer to a checkpoint."""
    if not re.fullmatch(BUCKET_PATTERN, bucket):
        raise ValueError(f"bucket {bucket!r} is not an S3 bucket name")
    return f"s3://{bucket}/{checkpoint_prefix(job_id, step)}"


def parse_manifest_key(key: str) -> tuple[str, int] | None:
    """``(job_id, step)`` of a manifest's S3 key (already URL-decoded), or None for any other key."""
    match = _MANIFEST_KEY.fullmatch(key)
    if match is None:
        return None
    return match[1], int(match[2])


def parse_checkpoint_uri(uri: str) -> tuple[str, str, int] | None:
    """``(bucket, job_id, step)`` of a checkpoint URI, or None when it is not one."""
    match = _CHECKPOINT_URI.fullmatch(uri)
    if match is None:
        return None
    return match[1], match[2], int(match[3])


class ShardEntry(BaseModel):
    """One object of a checkpoint, next to the manifest: its name in the checkpoint's prefix, size and digest."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    name: ShardName
    #: Size of the stored (compressed) object in bytes.
    size: SizeBytes
    #: sha256 of the stored (compressed) object, so a copy can be verified without decompressing it.
    sha256: Sha256
    #: S3's SHA-256 checksum of the stored object, as S3 computed it on upload (``ChecksumAlgorithm=SHA256``): for
    #: a single PUT the full-object checksum (``sha256`` in base64), for a multipart upload the composite with its
    #: ``-N``. The backup verifies a shard by it from the object's metadata, without reading the shard; None in
    #: manifests written before workers sent checksums (those still restore, but the backup quarantines them).
    checksum_sha256: S3Sha256Checksum | None = None

    @field_validator("name")
    @classmethod
    def _not_a_reserved_name(cls, name: str) -> str:
        if name in {".", "..", MANIFEST_NAME}:
            raise ValueError(f"a shard cannot be named {name!r}")
        return name

    @model_validator(mode="after")
    def _full_object_checksum_is_the_sha256(self) -> ShardEntry:
        checksum = self.checksum_sha256
        if checksum is not None and "-" not in checksum and checksum != full_object_checksum(self.sha256):
            raise ValueError(
                f"shard {self.name}: checksum_sha256 {checksum} is a full-object checksum, but not the base64 of "
                f"its sha256 {self.sha256}"
            )
        return self

    @property
    def checksum_parts(self) -> int | None:
        """The number of parts of a composite ``checksum_sha256``; None for a full-object one or none."""
        if self.checksum_sha256 is None or "-" not in self.checksum_sha256:
            return None
        return int(self.checksum_sha256.rpartition("-")[2])


class CheckpointManifest(BaseModel):
    """``manifest.json``: lists every shard of a checkpoint; a checkpoint exists once this exists and verifies."""

    model_config = ConfigDict(defer_build=True, extra="forbid", frozen=True)

    format_version: Literal[1] = 1
    job_id: JobId
    step: Step
    generation: Generation
    world_size: WorldSize
    created_at: AwareDatetime
    #: The instance whose worker wrote it (the runtime's instance id). The backup makes a checkpoint durable only when
    #: this instance is a node of the job at the manifest's generation, in the job's current or previous generation:
    #: a worker of another job cannot make its manifest another job's checkpoint. None in manifests written before
    #: writers named themselves: those still restore, but the backup quarantines them.
    instance_id: WriterId | None = None
    compression: Literal["zstd"] = "zstd"
    shards: list[ShardEntry] = Field(min_length=1, max_length=MAX_SHARDS)
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=256)

    @model_validator(mode="after")
    def _shard_names_are_unique(self) -> CheckpointManifest:
        seen: set[str] = set()
        for shard in self.shards:
            if shard.name in seen:
                raise ValueError(f"shards: {shard.name!r} is listed twice")
            seen.add(shard.name)
        return self

    @property
    def prefix(self) -> str:
        """The S3 key prefix this manifest and its shards live under."""
        return checkpoint_prefix(self.job_id, self.step)

    @property
    def key(self) -> str:
        """The S3 key of this manifest."""
        return self.prefix + MANIFEST_NAME

    @property
    def total_size(self) -> int:
        """Bytes stored for this checkpoint, the manifest not counted."""
        return sum(s.size for s in self.shards)

    def shard_key(self, shard: ShardEntry | str) -> str:
        """The S3 key of one of this checkpoint's shards."""
        name = shard.name if isinstance(shard, ShardEntry) else shard
        if name not in {s.name for s in self.shards}:
            raise KeyError(f"{name!r} is not a shard of checkpoint {self.prefix}")
        return self.prefix + name


def parse_manifest(raw: bytes | str) -> CheckpointManifest:
    """Parses a ``manifest.json`` body; raises pydantic's ValidationError naming the offending field."""
    return CheckpointManifest.model_validate_json(raw)


def encode_manifest(manifest: CheckpointManifest) -> bytes:
    """The bytes to store as ``manifest.json``."""
    return manifest.model_dump_json(indent=2).encode()
