"""services/checkpoint_backup: the sample S3 notification (from the backup queue) of the sample job's step-120
manifest backs a real checkpoint up to the backup bucket and makes it the job's newest durable checkpoint; the same
notification twice changes nothing more; a checkpoint whose shard does not match its manifest is quarantined and
never copied; S3's test event is acknowledged."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from ringfleet.backup.ports import CheckpointStatus
from ringfleet.contracts import CheckpointManifest, ShardEntry, encode_manifest, manifest_key
from tests.builders import instance, running_job
from tests.functional.handlers import SAMPLE_FIRST_INSTANCE, SAMPLE_JOB, Handler, handler_of, in_sqs, sample

pytestmark = [pytest.mark.functional, pytest.mark.timeout(120)]

SHARD = b"model weights, compressed" * 1000
WRITER = instance(SAMPLE_FIRST_INSTANCE)


@pytest.fixture(scope="module")
def handler(broker_url: str) -> Iterator[Handler]:
    with handler_of("checkpoint_backup", broker_url) as loaded:
        yield loaded


@pytest.fixture
def backup(handler: Handler) -> Handler:
    handler.reset()
    s3 = boto3.client("s3")
    for bucket in (handler.ref("CheckpointBucket"), handler.ref("BackupBucket")):
        for version in s3.list_object_versions(Bucket=bucket).get("Versions", []):
            s3.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
    job, nodes = running_job(SAMPLE_JOB, members=3, generation=3, first=SAMPLE_FIRST_INSTANCE)
    handler.seed(job, nodes)
    return handler


def save_checkpoint(backup: Handler, step: int, *, stored: bytes = SHARD) -> None:
    """What a worker writes: the shard (S3 computing its SHA-256 checksum), then the manifest listing ``SHARD``."""
    s3, bucket = boto3.client("s3"), backup.ref("CheckpointBucket")
    prefix = manifest_key(SAMPLE_JOB, step).removesuffix("manifest.json")
    s3.put_object(Bucket=bucket, Key=prefix + "rank-0.pt.zst", Body=stored, ChecksumAlgorithm="SHA256")
    digest = hashlib.sha256(SHARD)
    shard = ShardEntry(
        name="rank-0.pt.zst",
        size=len(SHARD),
        sha256=digest.hexdigest(),
        checksum_sha256=base64.b64encode(digest.digest()).decode(),
    )
    manifest = CheckpointManifest(
        job_id=SAMPLE_JOB,
        step=step,
        generation=3,
        world_size=3,
        created_at=datetime.now(UTC),
        instance_id=instance(SAMPLE_FIRST_INSTANCE),  # rank 0 of the seeded job: a member may write its checkpoints
        shards=[shard],
    )
    s3.put_object(Bucket=bucket, Key=manifest_key(SAMPLE_JOB, step), Body=encode_manifest(manifest))


def notification_of(step: int) -> dict[str, Any]:
    """The sample notification, about the manifest of ``step`` (its own sequencer: another object version)."""
    event = sample("s3_object_created_sqs.json")
    body = json.loads(event["Records"][0]["body"])
    body["Records"][0]["s3"]["object"]["key"] = manifest_key(SAMPLE_JOB, step)
    body["Records"][0]["s3"]["object"]["sequencer"] = f"00683DB0F66AC3A{step:03d}"
    return in_sqs(body)


def backed_up(backup: Handler, step: int) -> list[str]:
    prefix = manifest_key(SAMPLE_JOB, step).removesuffix("manifest.json")
    listed = boto3.client("s3").list_objects_v2(Bucket=backup.ref("BackupBucket"), Prefix=prefix)
    return sorted(o["Key"].removeprefix(prefix) for o in listed.get("Contents", []))


def test_a_verified_checkpoint_is_backed_up_once_and_becomes_the_jobs_durable_one(backup: Handler) -> None:
    # given the checkpoint the sample notification names, as a worker saved it
    save_checkpoint(backup, 120)
    # when the sample notification arrives (twice)
    assert backup(sample("s3_object_created_sqs.json")) == {"batchItemFailures": []}
    after = backup.tables()
    assert backup(sample("s3_object_created_sqs.json")) == {"batchItemFailures": []}
    assert backup.tables() == after, "the second delivery changed the tables"
    # then the checkpoint is in the backup bucket, recorded durable, and the job restores from it
    assert backed_up(backup, 120) == ["manifest.json", "rank-0.pt.zst"]
    job = backup.jobs.get(SAMPLE_JOB)
    assert job is not None and job.durable_checkpoint is not None
    assert job.durable_checkpoint.step == 120
    assert job.durable_checkpoint.uri.startswith(f"s3://{backup.ref('BackupBucket')}/")
    (record,) = after["CheckpointsTable"]
    assert record["status"]["S"] == CheckpointStatus.DURABLE.value


def test_a_checkpoint_whose_shard_differs_from_its_manifest_is_quarantined_and_not_copied(backup: Handler) -> None:
    # given a step-160 checkpoint whose stored shard is not the one its manifest lists
    save_checkpoint(backup, 160, stored=SHARD[:-1] + b"!")
    # when its notification arrives
    assert backup(notification_of(160)) == {"batchItemFailures": []}
    # then nothing is copied, the job has no durable checkpoint, and the record says quarantined
    assert backed_up(backup, 160) == []
    job = backup.jobs.get(SAMPLE_JOB)
    assert job is not None and job.durable_checkpoint is None
    (record,) = backup.tables()["CheckpointsTable"]
    assert record["status"]["S"] == CheckpointStatus.QUARANTINED.value


def test_s3s_test_event_is_acknowledged_and_changes_nothing(backup: Handler) -> None:
    before = backup.tables()
    assert backup(in_sqs(sample("s3_test_event.json"))) == {"batchItemFailures": []}
    assert backup.tables() == before
