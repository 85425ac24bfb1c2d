"""The checkpoint backup use case: verify a new checkpoint, copy it to the backup bucket, record it, apply retention.

Shards are verified without reading them, so a checkpoint of hundreds of GB backs up in the time and memory of a
small one: each shard's size and the SHA-256 checksum S3 computed on upload (from the object's metadata) must be
the manifest's, and the copy is server-side, of exactly the version verified, checked by the checksum S3 computes
for the copy. A checkpoint whose manifest does not parse, names another checkpoint, lists a shard without an S3
checksum (a writer from before checksums), or a shard that is missing, differs in size or checksum, or changes
before it is copied is quarantined: recorded as QUARANTINED with the reason, never copied (a partial copy is
deleted), never made durable — so no restart ever loads it, and the job's previous durable checkpoint stays the one
a restart uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import ValidationError

from ringfleet.backup.ports import CheckpointRecord, CheckpointStatus, ShardChanged
from ringfleet.backup.retention import plan_retention
from ringfleet.contracts.checkpoints import same_s3_checksum
from ringfleet.core.jobs import DurableCheckpoint

if TYPE_CHECKING:
    from ringfleet.backup.ports import CheckpointCatalog, CheckpointObjects, StoredShard
    from ringfleet.contracts import CheckpointManifest, CreatedObject
    from ringfleet.core.ports import Clock, JobRepository

__all__ = ["BackupOutcome", "BackupService"]

#: Manifests list at most 4096 shards; a few hundred bytes each.
MAX_MANIFEST_BYTES = 4 * 1024 * 1024


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
        clock: Clock,
        backup_bucket: str,
        keep_last: int,
        keep_every: int = 0,
    ) -> None:
        self.store, self.catalog, self.jobs, self.clock = store, catalog, jobs, clock
        self.backup_bucket, self.keep_last, self.keep_every = backup_bucket, keep_last, keep_every

    def on_manifest_created(self, created: CreatedObject) -> BackupOutcome:
        from ringfleet.contracts import checkpoint_uri, parse_manifest, parse_manifest_key

        named = parse_manifest_key(created.key)
        if named is None:
            raise ValueError(
                f"s3 key {created.key!r} is not a checkpoint manifest (jobs/<job>/ckpt/<step>/manifest.json)"
            )
        job_id, step = named
        known = {r.step: r for r in self.catalog.list(job_id)}.get(step)
        if known is not None:
            return BackupOutcome(job_id, step, "already-handled", reason=known.status.value)
        source_uri = checkpoint_uri(created.bucket, job_id, step)
        try:
            body = self.store.read(created.bucket, created.key, max_bytes=MAX_MANIFEST_BYTES)
            manifest = parse_manifest(body)
        except (ValidationError, ValueError) as exc:
            return self._quarantine(job_id, step, 0, source_uri, f"manifest is invalid: {exc}")
        if (manifest.job_id, manifest.step) != (job_id, step):
            reason = f"manifest names {manifest.job_id} step {manifest.step}, but is stored as {job_id} step {step}"
            return self._quarantine(job_id, step, manifest.generation, source_uri, reason)
        verified = self._verify(manifest, created.bucket)
        if isinstance(verified, str):
            return self._quarantine(job_id, step, manifest.generation, source_uri, verified)
        try:
            self.store.copy_checkpoint(manifest, body, verified, created.bucket, self.backup_bucket)
        except ShardChanged as exc:
            self.store.delete_checkpoint(self.backup_bucket, job_id, step)
            return self._quarantine(job_id, step, manifest.generation, source_uri, str(exc))
        backup_uri = checkpoint_uri(self.backup_bucket, job_id, step)
        self.catalog.put(self._record(manifest, CheckpointStatus.DURABLE, backup_uri))
        newest = self.jobs.record_durable_checkpoint(
            job_id, DurableCheckpoint(uri=backup_uri, step=step, generation=manifest.generation)
        )
        retired = self._retire(job_id, created.bucket)
        return BackupOutcome(job_id, step, "backed-up", newest=newest, retired=tuple(retired))

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
        durable = [r.step for r in records if r.status is CheckpointStatus.DURABLE]
        doomed = plan_retention(durable, keep_last=self.keep_last, keep_every=self.keep_every, protected=protected)
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

    def _quarantine(self, job_id: str, step: int, generation: int, uri: str, reason: str) -> BackupOutcome:
        self.catalog.put(
            CheckpointRecord(
                job_id=job_id,
                step=step,
                generation=generation,
                status=CheckpointStatus.QUARANTINED,
                uri=uri,
                size_bytes=0,
                recorded_at=self.clock.now(),
                reason=reason,
            )
        )
        return BackupOutcome(job_id, step, "quarantined", reason=reason)

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
