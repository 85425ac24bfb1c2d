"""The checkpoint backup use case: vet and verify a new checkpoint, copy it to the backup bucket, record it, apply
retention.

A checkpoint counts only when its writer may write it (``writers.refused_writer``): the manifest names the instance
that wrote it, and that instance must be a node of the job, a member at the manifest's generation, in the job's
current or previous generation. A manifest put under another job's prefix (by a worker of job A under job B's, say)
is quarantined and logged like any other, and changes nothing else: not B's durable checkpoint, not B's retention.

Shards are verified without reading them, so a checkpoint of hundreds of GB backs up in the time and memory of a
small one: each shard's size and the SHA-256 checksum S3 computed on upload (from the object's metadata) must be
the manifest's, and the copy is server-side, of exactly the version verified, checked by the checksum S3 computes
for the copy. A checkpoint whose manifest does not parse, names another checkpoint, lists a shard without an S3
checksum (a writer from before checksums), or a shard that is missing, differs in size or checksum, or changes
before it is copied is quarantined: recorded as QUARANTINED with the reason, never copied (a partial copy is
deleted), never made durable — so no restart ever loads it, and the job's previous durable checkpoint stays the one
a restart uses. A step once quarantined is vetted again when a new manifest for it arrives (the job's own worker
writing the step a forger wrote first); a durable or retired step is never handled twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ringfleet.backup.ports import CheckpointRecord, CheckpointStatus, ShardChanged
from ringfleet.backup.retention import plan_retention
from ringfleet.backup.writers import refused_writer
from ringfleet.contracts.checkpoints import same_s3_checksum
from ringfleet.core.jobs import DurableCheckpoint

if TYPE_CHECKING:
    from ringfleet.backup.ports import CheckpointCatalog, CheckpointObjects, StoredShard
    from ringfleet.contracts import CheckpointManifest, CreatedObject
    from ringfleet.core.ports import Clock, JobRepository, NodeRepository

__all__ = ["BackupOutcome", "BackupService"]

#: Manifests list at most 4096 shards; a few hundred bytes each.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Refused:
    """Why a checkpoint is quarantined, and the generation its manifest claims (0 when it does not parse)."""

    generation: int
    reason: str


@dataclass(frozen=True)
class _Vetted:
    manifest: CheckpointManifest
    body: bytes
    verified: dict[str, StoredShard]


@dataclass(frozen=True)
class BackupOutcome:
    job_id: str
    step: int
    #: backed-up, quarantined, already-handled
    result: str
    reason: str = ""
    #: Whether it became the job's newest durable checkpoint.
    newest: bool = False
    retired: tuple[int, ...] = ()


class BackupService:
    def __init__(
        self,
        *,
        store: CheckpointObjects,
        catalog: CheckpointCatalog,
        jobs: JobRepository,
        nodes: NodeRepository,
        clock: Clock,
        backup_bucket: str,
        keep_last: int,
        keep_every: int = 0,
    ) -> None:
        self.store, self.catalog, self.jobs, self.nodes, self.clock = store, catalog, jobs, nodes, clock
        self.backup_bucket, self.keep_last, self.keep_every = backup_bucket, keep_last, keep_every

    def on_manifest_created(self, created: CreatedObject) -> BackupOutcome:
        from ringfleet.contracts import checkpoint_uri, parse_manifest_key

        named = parse_manifest_key(created.key)
        if named is None:
            raise ValueError(
                f"s3 key {created.key!r} is not a checkpoint manifest (jobs/<job>/ckpt/<step>/manifest.json)"
            )
        job_id, step = named
        known = {r.step: r for r in self.catalog.list(job_id)}.get(step)
        if known is not None and known.status is not CheckpointStatus.QUARANTINED:
            return BackupOutcome(job_id, step, "already-handled", reason=known.status.value)
        vetted = self._vet(created, job_id, step)
        if isinstance(vetted, _Refused):
            return self._quarantine(job_id, step, vetted, checkpoint_uri(created.bucket, job_id, step), known)
        manifest = vetted.manifest
        try:
            self.store.copy_checkpoint(manifest, vetted.body, vetted.verified, created.bucket, self.backup_bucket)
        except ShardChanged as exc:
            self.store.delete_checkpoint(self.backup_bucket, job_id, step)
            refused = _Refused(manifest.generation, str(exc))
            return self._quarantine(job_id, step, refused, checkpoint_uri(created.bucket, job_id, step), known)
        backup_uri = checkpoint_uri(self.backup_bucket, job_id, step)
        self.catalog.put(self._record(manifest, CheckpointStatus.DURABLE, backup_uri))
        newest = self.jobs.record_durable_checkpoint(
            job_id, DurableCheckpoint(uri=backup_uri, step=step, generation=manifest.generation)
        )
        retired = self._retire(job_id, created.bucket)
        return BackupOutcome(job_id, step, "backed-up", newest=newest, retired=tuple(retired))

    def _vet(self, created: CreatedObject, job_id: str, step: int) -> _Vetted | _Refused:
        """The manifest (the version the event names), when it is this checkpoint's, its writer may write it and
        every shard verifies; else why not."""
        from ringfleet.contracts import parse_manifest

        try:
            body = self.store.read(
                created.bucket, created.key, max_bytes=MAX_MANIFEST_BYTES, version_id=created.version_id
            )
            manifest = parse_manifest(body)
        except (ValidationError, ValueError) as exc:
            return _Refused(0, f"manifest is invalid: {exc}")
        if (manifest.job_id, manifest.step) != (job_id, step):
            reason = f"manifest names {manifest.job_id} step {manifest.step}, but is stored as {job_id} step {step}"
            return _Refused(manifest.generation, reason)
        refused = refused_writer(manifest, self.jobs.get(job_id), self.nodes.list_by_job(job_id))
        if refused is not None:
            return _Refused(manifest.generation, refused)
        verified = self._verify(manifest, created.bucket)
        if isinstance(verified, str):
            return _Refused(manifest.generation, verified)
        return _Vetted(manifest, body, verified)

    def _verify(self, manifest: CheckpointManifest, bucket: str) -> dict[str, StoredShard] | str:
        """Each shard as stored, by name, when all match the manifest; else what does not."""
        unchecked = [s.name for s in manifest.shards if s.checksum_sha256 is None]
        if unchecked:
            return (
                f"manifest lists shard {unchecked[0]} without an S3 checksum (checksum_sha256; "
                f"{len(unchecked)} of {len(manifest.shards)} shards): written by a worker from before checksums, it "
                "cannot be verified without reading every shard"
            )
        verified: dict[str, StoredShard] = {}
        for shard in manifest.shards:
            stored = self.store.stored(bucket, manifest.shard_key(shard))
            if stored is None:
                return f"shard {shard.name} is missing"
            if stored.size != shard.size:
                return f"shard {shard.name} is {stored.size} bytes, the manifest says {shard.size}"
            if not stored.checksum_sha256:
                return f"shard {shard.name} is stored without an S3 SHA-256 checksum"
            if not same_s3_checksum(stored.checksum_sha256, str(shard.checksum_sha256)):
                return (
                    f"shard {shard.name} has S3 SHA-256 checksum {stored.checksum_sha256}, "
                    f"the manifest says {shard.checksum_sha256}"
                )
            verified[shard.name] = stored
        return verified

    def _retire(self, job_id: str, source_bucket: str) -> list[int]:
        records = self.catalog.list(job_id)
        job = self.jobs.get(job_id)
        protected = [job.durable_checkpoint.step if job and job.durable_checkpoint else None]
        protected.append(job.restoring_step if job else None)
        doomed = plan_retention(records, keep_last=self.keep_last, keep_every=self.keep_every, protected=protected)
        by_step = {r.step: r for r in records}
        for step in doomed:
            self.store.delete_checkpoint(self.backup_bucket, job_id, step)
            self.store.delete_checkpoint(source_bucket, job_id, step)
            old = by_step[step]
            self.catalog.put(
                CheckpointRecord(
                    job_id=job_id,
                    step=step,
                    generation=old.generation,
                    status=CheckpointStatus.RETIRED,
                    uri=old.uri,
                    size_bytes=old.size_bytes,
                    recorded_at=self.clock.now(),
                    reason=f"retention: newest {self.keep_last} kept",
                )
            )
        return doomed

    def _quarantine(
        self, job_id: str, step: int, refused: _Refused, uri: str, known: CheckpointRecord | None
    ) -> BackupOutcome:
        """Records the checkpoint QUARANTINED with the reason (once: the same verdict again changes nothing)."""
        if known is None or (known.generation, known.reason) != (refused.generation, refused.reason):
            self.catalog.put(
                CheckpointRecord(
                    job_id=job_id,
                    step=step,
                    generation=refused.generation,
                    status=CheckpointStatus.QUARANTINED,
                    uri=uri,
                    size_bytes=0,
                    recorded_at=self.clock.now(),
                    reason=refused.reason,
                )
            )
        return BackupOutcome(job_id, step, "quarantined", reason=refused.reason)

    def _record(self, manifest: CheckpointManifest, status: CheckpointStatus, uri: str) -> CheckpointRecord:
        return CheckpointRecord(
            job_id=manifest.job_id,
            step=manifest.step,
            generation=manifest.generation,
            status=status,
            uri=uri,
            size_bytes=manifest.total_size,
            recorded_at=self.clock.now(),
        )
