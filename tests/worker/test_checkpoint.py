"""Checkpoints on S3: manifest last, verified before loading; a tampered or truncated shard is never loaded."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import torch
from moto import mock_aws

from ringfleet.contracts import MANIFEST_NAME, CheckpointManifest, checkpoint_prefix
from training_worker.checkpoint import (
    AsyncCheckpointer,
    CheckpointCorrupt,
    S3CheckpointStore,
    SavedCheckpoint,
)
from training_worker.runtime import Runtime, RuntimeConfig

pytestmark = pytest.mark.worker

BUCKET = "ckpt"


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3CheckpointStore]:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        # a 64 KiB multipart threshold: larger shards go up as multipart uploads (in parts of S3's least, 5 MiB)
        yield S3CheckpointStore(BUCKET, "digits-demo", s3_client=s3, multipart_bytes=64 << 10)


def _tree(value: float) -> dict[str, object]:
    return {"model": {"w": torch.full((100_000,), value)}, "trainer": {"step": int(value)}}


def test_saved_checkpoint_lists_every_shard_in_a_manifest_and_loads_back(store: S3CheckpointStore) -> None:
    # given a checkpoint saved in the background at step 7
    done: list[SavedCheckpoint] = []
    saver = AsyncCheckpointer(store)
    saver.save_async(7, 2, 3, _tree(7.0), done.append)
    saver.wait()
    # then its manifest names each zstd shard with size and sha256, and the checkpoint loads back equal
    raw = store.s3.get_object(Bucket=BUCKET, Key=checkpoint_prefix("digits-demo", 7) + MANIFEST_NAME)["Body"].read()
    manifest = CheckpointManifest.model_validate_json(raw)
    assert (manifest.step, manifest.generation, manifest.world_size) == (7, 2, 3)
    assert sorted(s.name for s in manifest.shards) == ["model.pt.zst", "trainer.pt.zst"]
    assert done[0].uri == "s3://ckpt/jobs/digits-demo/ckpt/000000000007/"
    _, tree = store.load(7)
    assert torch.equal(tree["model"]["w"], torch.full((100_000,), 7.0)) and tree["trainer"]["step"] == 7


def test_the_manifest_names_the_instance_whose_runtime_wrote_it(store: S3CheckpointStore) -> None:
    # given the runtime of instance i-0123456789abcdef0 serving the job (the backup accepts only a member's manifest)
    runtime = Runtime(RuntimeConfig(job_id="digits-demo", instance_id="i-0123456789abcdef0", bucket=BUCKET))
    assert runtime.tiers.store is not None
    # when it saves a checkpoint
    runtime.tiers.store.save(9, 1, 1, _tree(9.0))
    # then the manifest names that instance as its writer
    manifest, _ = store.load(9)
    assert manifest.instance_id == "i-0123456789abcdef0"


def test_each_shard_is_listed_with_the_sha256_checksum_s3_keeps_full_object_or_composite(
    store: S3CheckpointStore,
) -> None:
    # given a checkpoint with a small shard (one PUT) and a 12 MiB incompressible one (multipart: 3 parts of 5 MiB)
    tree = {"small": {"step": 1}, "big": torch.randint(-(2**62), 2**62, (12 << 17,), generator=torch.Generator())}
    store.save(5, 0, 1, tree)
    manifest, _ = store.load(5)
    # then each entry names the checksum S3 reports for the object it lists: the sha256 itself for the one-PUT
    # shard, the composite of 3 parts for the big one
    entries = {s.name: s for s in manifest.shards}
    assert entries["small.pt.zst"].checksum_parts is None and entries["big.pt.zst"].checksum_parts == 3
    for shard in manifest.shards:
        got = store.s3.get_object(Bucket=BUCKET, Key=manifest.shard_key(shard), ChecksumMode="ENABLED")
        assert shard.checksum_sha256 is not None
        assert got["ChecksumSHA256"] == shard.checksum_sha256
        assert got["ContentLength"] == shard.size


def test_the_snapshot_is_taken_at_the_step_boundary_not_when_uploaded(store: S3CheckpointStore) -> None:
    # given a save started, then the live tensor changed by training
    tree = _tree(1.0)
    saver = AsyncCheckpointer(store)
    saver.save_async(1, 0, 1, tree)
    tree["model"]["w"].add_(100)  # type: ignore[index]
    saver.wait()
    # then the checkpoint holds the values of the step boundary
    assert float(store.load(1)[1]["model"]["w"][0]) == 1.0


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_a_damaged_shard_is_never_loaded_and_the_next_older_checkpoint_is_used(
    store: S3CheckpointStore, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    # given checkpoints at steps 10 and 20, and step 20's model shard damaged after the manifest was written
    store.save(10, 0, 1, _tree(10.0))
    store.save(20, 0, 1, _tree(20.0))
    key = checkpoint_prefix("digits-demo", 20) + "model.pt.zst"
    blob = store.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    damaged = blob[:-10] if damage == "truncated" else blob[:-10] + bytes(10)
    store.s3.put_object(Bucket=BUCKET, Key=key, Body=damaged)
    # when the newest checkpoint is loaded
    with caplog.at_level(logging.WARNING):
        newest = store.load_newest()
    # then step 20 is refused with a log line naming the shard, and step 10 is what comes back
    assert newest is not None and newest[0].step == 10
    assert float(newest[1]["model"]["w"][0]) == 10.0
    assert "model.pt.zst of step 20" in caplog.text
    with pytest.raises(CheckpointCorrupt):
        store.load(20)


def test_a_checkpoint_without_its_manifest_does_not_exist(store: S3CheckpointStore) -> None:
    # given shards of step 30 uploaded but no manifest yet (the writer died mid-way)
    store.save(10, 0, 1, _tree(10.0))
    store.s3.put_object(Bucket=BUCKET, Key=checkpoint_prefix("digits-demo", 30) + "model.pt.zst", Body=b"partial")
    # then resume ignores it
    assert store.steps() == [10]
    newest = store.load_newest()
    assert newest is not None and newest[0].step == 10


def test_a_caller_passing_its_own_snapshot_is_not_copied_again(store: S3CheckpointStore) -> None:
    # given a commit's snapshot passed with copy=False (the runtime's path: TorchState.committed())
    tree = _tree(3.0)
    saver = AsyncCheckpointer(store)
    saver.save_async(3, 0, 1, tree, copy=False)
    saver.wait()
    # then what was passed is what was uploaded
    assert saver.error is None and float(store.load(3)[1]["model"]["w"][0]) == 3.0


def test_the_upload_thread_runs_below_training_and_training_keeps_its_priority(store: S3CheckpointStore) -> None:
    # given a background save (on_done runs on the upload thread)
    seen: list[int] = []
    saver = AsyncCheckpointer(store, niceness=5)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    saver.save_async(4, 0, 1, _tree(4.0), lambda _: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
    saver.wait()
    # then the upload thread ran nicer, and the calling thread's priority is unchanged
    assert seen == [min(19, before + 5)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_the_local_disk_tier_serves_a_restore_on_the_same_instance_and_only_a_durable_intact_one(
    store: S3CheckpointStore, tmp_path: Path
) -> None:
    # given a store with a local-disk tier that saved steps 10, 20 and 30
    local = S3CheckpointStore(BUCKET, "digits-demo", s3_client=store.s3, cache_dir=tmp_path)
    for step in (10, 20, 30):
        local.save(step, 1, 2, _tree(float(step)))
    # then it keeps only the newest two on disk
    assert sorted(p.name for p in (tmp_path / "digits-demo").iterdir()) == ["000000000020", "000000000030"]
    # when S3 loses the newest checkpoint's shards (its manifest stays): the restore reads them from local disk
    prefix = checkpoint_prefix("digits-demo", 30)
    for name in ("model.pt.zst", "trainer.pt.zst"):
        store.s3.delete_object(Bucket=BUCKET, Key=prefix + name)
    manifest, tree = local.load_newest()  # type: ignore[misc]
    assert manifest.step == 30 and torch.equal(tree["model"]["w"], torch.full((100_000,), 30.0))
    # when a local shard is damaged: it is read from S3 instead, and still verified
    (tmp_path / "digits-demo" / "000000000020" / "model.pt.zst").write_bytes(b"rot")
    _, tree = local.load(20)
    assert torch.equal(tree["model"]["w"], torch.full((100_000,), 20.0))
    # and a local copy whose checkpoint S3 does not hold (never durable) is not a checkpoint at all
    store.s3.delete_object(Bucket=BUCKET, Key=prefix + MANIFEST_NAME)
    newest = local.load_newest()
    assert newest is not None and newest[0].step == 20
