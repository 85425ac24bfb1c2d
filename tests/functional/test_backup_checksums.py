"""The backup verifies checkpoints by the SHA-256 checksums S3 computed on upload, never reading a shard, on moto.

Checkpoints are saved by the worker's own store, as a member of a running job; the backup runs with the runtime's S3
and DynamoDB adapters against template.yaml's buckets (the checkpoint bucket versioned) and tables. Its S3 client
counts the objects it reads (botocore's before-parameter-build event): only manifests, whatever the checkpoint's
size.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest
import torch
from ringfleet_local.cloud import LocalCloud

from ringfleet.adapters.dynamodb import DynamoDbCheckpointCatalog, DynamoDbJobRepository, DynamoDbNodeRepository
from ringfleet.adapters.s3_checkpoints import S3CheckpointObjects
from ringfleet.backup.ports import CheckpointStatus
from ringfleet.backup.service import BackupOutcome, BackupService
from ringfleet.contracts import CheckpointManifest, CreatedObject, ShardEntry, encode_manifest, manifest_key
from ringfleet.core.ports import SystemClock
from tests.builders import running_job
from training_worker.checkpoint import S3CheckpointStore

pytestmark = pytest.mark.functional

MiB = 1 << 20
#: Instance ids no other test of the session's moto uses (the nodes table is keyed by instance).
_FIRST_INSTANCE = itertools.count(0xB000, 16)


class CountingS3:
    """An S3 client that records the keys it reads (GetObject) and the copies it asks for (CopyObject)."""

    def __init__(self) -> None:
        self.client = boto3.client("s3")
        self.reads: list[str] = []
        self.copies: list[dict[str, Any]] = []
        events = self.client.meta.events
        events.register("before-parameter-build.s3.GetObject", lambda params, **_: self.reads.append(params["Key"]))
        events.register("before-parameter-build.s3.CopyObject", lambda params, **_: self.copies.append(dict(params)))

    def shard_reads(self) -> list[str]:
        return [k for k in self.reads if not k.endswith("/manifest.json")]


class Backup:
    def __init__(self, aws: LocalCloud, *, copy_object_limit: int | None = None) -> None:
        self.source = str(aws.ctx.resolve({"Ref": "CheckpointBucket"}))
        self.target = str(aws.ctx.resolve({"Ref": "BackupBucket"}))
        self.s3 = CountingS3()
        objects = S3CheckpointObjects(s3_client=self.s3.client)
        if copy_object_limit is not None:
            objects.copy_object_limit = copy_object_limit
        self.catalog = DynamoDbCheckpointCatalog(str(aws.ctx.resolve({"Ref": "CheckpointsTable"})))
        self.jobs = DynamoDbJobRepository(str(aws.ctx.resolve({"Ref": "JobsTable"})), clock=SystemClock())
        self.nodes = DynamoDbNodeRepository(str(aws.ctx.resolve({"Ref": "NodesTable"})), clock=SystemClock())
        self.service = BackupService(
            store=objects,
            catalog=self.catalog,
            jobs=self.jobs,
            nodes=self.nodes,
            clock=SystemClock(),
            backup_bucket=self.target,
            keep_last=3,
        )

    def seed(self, job_id: str, *, members: int = 1, generation: int = 1) -> list[str]:
        """A RUNNING job at ``generation`` with ``members`` ACTIVE nodes; returns their instance ids (rank order)."""
        job, nodes = running_job(job_id, members=members, generation=generation, first=next(_FIRST_INSTANCE))
        assert self.jobs.create(job)
        for node in nodes:
            self.nodes.put(node)
        return [n.instance_id for n in nodes]

    def worker_store(self, job_id: str, writer: str | None = None) -> S3CheckpointStore:
        """The store of the job's rank-0 worker (a new running job, unless ``writer`` names one)."""
        # S3's least part size as threshold: the model shards below go up as multipart uploads (composite checksums)
        return S3CheckpointStore(
            self.source,
            job_id,
            s3_client=boto3.client("s3"),
            multipart_bytes=5 * MiB,
            writer=writer or self.seed(job_id)[0],
        )

    def run(self, job_id: str, step: int) -> BackupOutcome:
        key = manifest_key(job_id, step)
        head = boto3.client("s3").head_object(Bucket=self.source, Key=key)
        created = CreatedObject(
            self.source, key, head["ContentLength"], head["ETag"].strip('"'), "0A", head.get("VersionId")
        )
        return self.service.on_manifest_created(created)

    def copied(self, job_id: str, step: int) -> set[str]:
        prefix = manifest_key(job_id, step).removesuffix("manifest.json")
        listed = boto3.client("s3").list_objects_v2(Bucket=self.target, Prefix=prefix)
        return {o["Key"].removeprefix(prefix) for o in listed.get("Contents", [])}

    def status(self, job_id: str, step: int) -> CheckpointStatus:
        return {r.step: r.status for r in self.catalog.list(job_id)}[step]


def tree(step: int, model_mib: int = 6) -> dict[str, Any]:
    """A model shard of ``model_mib`` MiB of random (incompressible) numbers, and a small one."""
    generator = torch.Generator().manual_seed(step)
    model = torch.randint(-(2**62), 2**62, (model_mib * MiB // 8,), generator=generator)
    return {"model": {"w": model}, "trainer": {"step": step}}


def test_a_checkpoint_saved_by_the_worker_is_backed_up_without_reading_a_shard_and_restores_from_the_copy(
    aws: LocalCloud,
) -> None:
    # given a checkpoint saved by the worker: a 6 MiB model shard (2 parts: composite checksum), a small one (one PUT)
    backup = Backup(aws)
    backup.worker_store("bk-worker").save(10, 1, 1, tree(10))
    # when the backup handles its manifest
    outcome = backup.run("bk-worker", 10)
    # then it is backed up and durable, having read the manifest and not one shard byte
    assert (outcome.result, outcome.reason) == ("backed-up", "")
    assert backup.s3.shard_reads() == [] and backup.s3.reads == [manifest_key("bk-worker", 10)]
    assert backup.copied("bk-worker", 10) == {"model.pt.zst", "trainer.pt.zst", "manifest.json"}
    assert backup.status("bk-worker", 10) is CheckpointStatus.DURABLE
    # and a restart restores it from the backup bucket, every byte verified by the worker
    manifest, restored = S3CheckpointStore(backup.target, "bk-worker", s3_client=boto3.client("s3")).load(10)
    assert [s.checksum_parts for s in manifest.shards] == [2, None]
    assert torch.equal(restored["model"]["w"], tree(10)["model"]["w"])


def test_composite_checksums_verify_and_a_shard_above_the_copy_object_limit_is_copied_in_its_own_parts(
    aws: LocalCloud,
) -> None:
    # given a checkpoint whose 12 MiB model shard went up in 3 parts, and a backup whose CopyObject limit is 5 MiB
    backup = Backup(aws, copy_object_limit=5 * MiB)
    backup.worker_store("bk-parts").save(20, 1, 1, tree(20, model_mib=12))
    # when the backup handles it
    outcome = backup.run("bk-parts", 20)
    # then the model shard was copied in parts (UploadPartCopy), not by CopyObject, and its copy has the source's
    # composite checksum; no shard was read
    assert outcome.result == "backed-up", outcome.reason
    assert [c["Key"].rsplit("/", 1)[1] for c in backup.s3.copies] == ["trainer.pt.zst"]
    assert backup.s3.shard_reads() == []
    s3 = boto3.client("s3")
    key = manifest_key("bk-parts", 20).replace("manifest.json", "model.pt.zst")
    source = s3.get_object(Bucket=backup.source, Key=key, ChecksumMode="ENABLED")
    copy = s3.get_object(Bucket=backup.target, Key=key, ChecksumMode="ENABLED")
    assert copy["ChecksumSHA256"] == source["ChecksumSHA256"] and source["ChecksumSHA256"].endswith("-3")
    assert copy["Body"].read() == source["Body"].read()


def swap_with_own_checksum(s3: Any, bucket: str, key: str) -> None:
    """Replaces an object by other bytes of the same size, uploaded with a valid checksum of their own."""
    old = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(b ^ 0xFF for b in old[:64]) + old[64:], ChecksumAlgorithm="SHA256")


def swap_without_checksum(s3: Any, bucket: str, key: str) -> None:
    old = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=old)


@pytest.mark.parametrize(
    ("swap", "reason"),
    [
        (swap_with_own_checksum, "has S3 SHA-256 checksum"),
        (swap_without_checksum, "stored without an S3 SHA-256 checksum"),
    ],
)
def test_a_shard_replaced_after_upload_is_quarantined_not_copied(
    aws: LocalCloud, swap: Callable[[Any, str, str], None], reason: str
) -> None:
    # given a checkpoint whose small shard was replaced after the worker uploaded it and wrote the manifest
    backup = Backup(aws)
    job = f"bk-swap-{swap.__name__.replace('_', '-')}"
    backup.worker_store(job).save(30, 1, 1, tree(30, model_mib=1))
    swap(boto3.client("s3"), backup.source, manifest_key(job, 30).replace("manifest.json", "trainer.pt.zst"))
    # when the backup handles it
    outcome = backup.run(job, 30)
    # then it is quarantined naming the shard, nothing of it is in the backup bucket, and it is not durable
    assert outcome.result == "quarantined" and "trainer.pt.zst" in outcome.reason and reason in outcome.reason
    assert backup.copied(job, 30) == set()
    assert backup.status(job, 30) is CheckpointStatus.QUARANTINED
    assert backup.s3.shard_reads() == []


def test_a_shard_overwritten_between_verification_and_copy_is_not_what_gets_copied(aws: LocalCloud) -> None:
    # given a checkpoint, and someone overwriting its model shard right after the backup verified it (the first HEAD)
    backup = Backup(aws)
    backup.worker_store("bk-race").save(40, 1, 1, tree(40, model_mib=1))
    s3 = boto3.client("s3")
    model_key = manifest_key("bk-race", 40).replace("manifest.json", "model.pt.zst")
    uploaded = s3.head_object(Bucket=backup.source, Key=model_key)
    swapped: list[bool] = []

    def swap_after_verification(**_: Any) -> None:
        if not swapped:
            swapped.append(True)
            swap_with_own_checksum(s3, backup.source, model_key)

    backup.s3.client.meta.events.register("after-call.s3.HeadObject", swap_after_verification)
    # when the backup handles it
    outcome = backup.run("bk-race", 40)
    # then the copy named the verified version of the shard (its VersionId in the versioned checkpoint bucket) ...
    (model_copy,) = [c for c in backup.s3.copies if c["Key"] == model_key]
    assert swapped and uploaded["VersionId"] not in (None, "null")
    assert model_copy["CopySource"] == f"{backup.source}/{model_key}?versionId={uploaded['VersionId']}"
    assert model_copy["CopySourceIfMatch"] == uploaded["ETag"]
    # ... so the backup holds the bytes that were verified, not the overwrite, and restores to the saved state
    assert outcome.result == "backed-up", outcome.reason
    assert s3.head_object(Bucket=backup.source, Key=model_key)["VersionId"] != uploaded["VersionId"]
    _, restored = S3CheckpointStore(backup.target, "bk-race", s3_client=s3).load(40)
    assert torch.equal(restored["model"]["w"], tree(40, model_mib=1)["model"]["w"])


def test_a_manifest_from_a_writer_before_checksums_is_quarantined_with_the_reason(aws: LocalCloud) -> None:
    # given a checkpoint written the old way by a member of the job: shards without S3 checksums, sha256 only
    backup = Backup(aws)
    (writer,) = backup.seed("bk-old")
    s3 = boto3.client("s3")
    prefix = manifest_key("bk-old", 50).removesuffix("manifest.json")
    shards = []
    for rank in range(2):
        data = f"old-writer-{rank}".encode() * 1000
        s3.put_object(Bucket=backup.source, Key=f"{prefix}rank-{rank}.pt.zst", Body=data)
        shards.append(ShardEntry(name=f"rank-{rank}.pt.zst", size=len(data), sha256=hashlib.sha256(data).hexdigest()))
    old = CheckpointManifest(
        job_id="bk-old",
        step=50,
        generation=1,
        world_size=2,
        created_at=datetime.now(UTC),
        instance_id=writer,
        shards=shards,
    )
    s3.put_object(Bucket=backup.source, Key=prefix + "manifest.json", Body=encode_manifest(old))
    # when the backup handles it
    outcome = backup.run("bk-old", 50)
    # then it is quarantined, saying why, without a shard read or copied
    assert outcome.result == "quarantined"
    assert "rank-0.pt.zst without an S3 checksum" in outcome.reason and "2 of 2 shards" in outcome.reason
    assert backup.s3.shard_reads() == [] and backup.copied("bk-old", 50) == set()
    assert backup.status("bk-old", 50) is CheckpointStatus.QUARANTINED
