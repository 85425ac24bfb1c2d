"""Checkpoints on S3: zstd shards, then a manifest with each shard's size, sha256 and S3 checksum and the instance that
wrote it; saved in the background. ``JobCredentials``: the job-scoped credentials a worker writes them with."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
import torch
import zstandard
from boto3.s3.transfer import TransferConfig
from botocore.credentials import RefreshableCredentials
from s3transfer.utils import ChunksizeAdjuster

from ringfleet.contracts import MANIFEST_NAME, CheckpointManifest, ShardEntry, checkpoint_prefix, parse_manifest_key
from ringfleet.contracts.checkpoints import composite_checksum, full_object_checksum, same_s3_checksum
from ringfleet.contracts.scalars import BUCKET_PATTERN, JOB_ID_PATTERN

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "INSTANCE_CREDENTIALS",
    "AsyncCheckpointer",
    "CheckpointCorrupt",
    "JobCredentials",
    "S3CheckpointStore",
    "SavedCheckpoint",
    "job_session_policy",
    "snapshot",
]

log = logging.getLogger("training_worker.checkpoint")

#: How far below training the upload thread runs (Linux), by default.
UPLOAD_NICENESS = 10


class CheckpointCorrupt(Exception):
    """A checkpoint whose manifest or shards do not verify."""


@dataclass(frozen=True)
class SavedCheckpoint:
    step: int
    uri: str
    manifest_sha256: str
    size_bytes: int


def snapshot(tree: Any) -> Any:
    """A CPU copy of a nest of dicts/lists holding tensors: training may go on changing the originals."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: snapshot(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(snapshot(v) for v in tree)
    return tree


def _serialize(value: Any) -> bytes:
    """``torch.save`` bytes. Saved through a temporary file: into a BytesIO, torch.save writes each tensor holding
    the GIL (~10 ms per 16 MB), and the training thread waits on it; to a path it writes in C++ without."""
    try:
        fd, path = tempfile.mkstemp(prefix="ringfleet-ckpt-", suffix=".pt")
    except OSError:  # no writable temporary directory
        raw = io.BytesIO()
        torch.save(value, raw)
        return raw.getvalue()
    os.close(fd)
    try:
        torch.save(value, path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def _lower_thread_priority(niceness: int) -> None:
    """Makes the calling thread (and the threads it starts: s3transfer's) yield the CPU to training. Linux only:
    there a thread has a nice value of its own; elsewhere ``setpriority`` would slow down the whole process."""
    if niceness <= 0 or not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + niceness))
    except OSError as e:  # a sandbox without setpriority: the upload runs at the training's priority
        log.debug("could not lower the checkpoint thread's priority: %s", e)


#: What a job's worker may do to its own checkpoints (HeadObject is GetObject; multipart parts are PutObject).
JOB_OBJECT_ACTIONS = ("s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
#: How long one AssumeRole's credentials last: an instance role's session assuming another role (role chaining) gets
#: an hour at most; JobCredentials renews them before they expire.
JOB_SESSION_S = 3600


def job_session_policy(bucket: str, job_id: str, *, partition: str = "aws") -> dict[str, Any]:
    """The session policy that narrows WorkerJobRole (every job's checkpoints) to one job: writing under
    ``jobs/<job_id>/`` of the checkpoint ``bucket``, and reading and listing ``jobs/<job_id>/`` only.

    Reads name no bucket: WorkerJobRole's own policy limits them to the checkpoint and backup buckets, so a restore
    from the backup bucket works without the worker knowing that bucket's name; a session policy only narrows.
    """
    if not re.fullmatch(BUCKET_PATTERN, bucket):
        raise ValueError(f"bucket {bucket!r} is not an S3 bucket name")
    if not re.fullmatch(JOB_ID_PATTERN, job_id):  # no wildcard or "/" may widen the policy
        raise ValueError(f"job_id {job_id!r} does not match {JOB_ID_PATTERN}")
    prefix = f"jobs/{job_id}/"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "WriteOwnJobsCheckpoints",
                "Effect": "Allow",
                "Action": list(JOB_OBJECT_ACTIONS),
                "Resource": f"arn:{partition}:s3:::{bucket}/{prefix}*",
            },
            {
                "Sid": "ReadOwnJobsBackups",
                "Effect": "Allow",
                "Action": "s3:GetObject",
                "Resource": f"arn:{partition}:s3:::*/{prefix}*",
            },
            {
                "Sid": "ListOwnJobsCheckpoints",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:{partition}:s3:::*",
                "Condition": {"StringLike": {"s3:prefix": f"{prefix}*"}},
            },
        ],
    }


#: The instance's own credentials in an environment: a process running the job's code never inherits them (botocore
#: would take them before the job's, ``JobCredentials``), whether the agent starts it as a child or as a slot.
INSTANCE_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
)


class JobCredentials:
    """Credentials that write under one job's prefix only: WorkerJobRole assumed with ``job_session_policy``, renewed
    before they expire (botocore refreshes them ahead of expiry, as it does an instance role's).

    The instance role itself cannot write checkpoints; the agent assumes this role once its first Reconfigure names
    the job, with the instance id as session name (CloudTrail shows which worker wrote what). The session policy is
    the worker's own choice, so it keeps a worker's bugs inside its job; what stops a worker of another job from
    making a checkpoint durable is the backup, which accepts a manifest only from a member of the job. The local
    cloud's moto does not enforce IAM: there the role is assumed through moto's STS all the same, so the calls are
    the ones made in AWS.
    """

    def __init__(
        self, role_arn: str, bucket: str, job_id: str, session_name: str, *, sts_client: Any | None = None
    ) -> None:
        self.role_arn, self.session_name = role_arn, session_name
        self.policy = json.dumps(job_session_policy(bucket, job_id, partition=role_arn.split(":")[1]))
        self._sts = sts_client or boto3.client("sts")
        #: The current credentials as AssumeRole returned them (their Expiration too), for the child's endpoint.
        self.latest: dict[str, Any] = {}
        self._credentials = RefreshableCredentials.create_from_metadata(
            metadata=self._assume(), refresh_using=self._assume, method="sts-assume-role"
        )

    def _assume(self) -> dict[str, str]:
        self.latest = self._sts.assume_role(
            RoleArn=self.role_arn,
            RoleSessionName=self.session_name[:64],
            Policy=self.policy,
            DurationSeconds=JOB_SESSION_S,
        )["Credentials"]
        return {
            "access_key": self.latest["AccessKeyId"],
            "secret_key": self.latest["SecretAccessKey"],
            "token": self.latest["SessionToken"],
            "expiry_time": self.latest["Expiration"].isoformat(),
        }

    def s3_client(self) -> S3Client:
        """An S3 client on these credentials (boto3 follows AWS_ENDPOINT_URL here too)."""
        core = botocore.session.get_session()
        core._credentials = self._credentials  # type: ignore[attr-defined]  # botocore: how a session gets refreshable ones
        client: S3Client = boto3.Session(botocore_session=core).client("s3")
        return client

    def current(self) -> dict[str, str]:
        """The credentials now (renewed first when they are about to expire), as a container credentials endpoint
        serves them (AWS_CONTAINER_CREDENTIALS_FULL_URI): what a child process or container writes checkpoints with."""
        frozen = self._credentials.get_frozen_credentials()
        return {
            "AccessKeyId": frozen.access_key,
            "SecretAccessKey": frozen.secret_key,
            "Token": frozen.token or "",
            "Expiration": self.latest["Expiration"].isoformat(),
        }


class S3CheckpointStore:
    """``s3://<bucket>/jobs/<job>/ckpt/<step:012d>/``: one zstd shard per top-level key, ``manifest.json`` last.

    The tiers: memory (every commit, ``TorchState``), this instance's local disk (``cache_dir``), S3. With a
    ``cache_dir`` each checkpoint is also kept on local disk (the newest ``CACHED`` of them), and a restore on the
    same instance (a job whose scripts all restarted there) reads the shards from disk instead of S3 — but only a
    checkpoint whose manifest is in S3 (durable) and identical to the local one, every shard verified as always.
    """

    #: Checkpoints kept on local disk.
    CACHED = 2

    def __init__(
        self,
        bucket: str,
        job_id: str,
        s3_client: S3Client | None = None,
        multipart_bytes: int = 8 << 20,
        level: int = 3,
        cache_dir: Path | None = None,
        writer: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.job_id = job_id
        #: The instance id each manifest names as its writer (the backup makes durable only a member's checkpoints).
        self.writer = writer
        self.cache = cache_dir / job_id if cache_dir is not None else None
        # boto3 follows AWS_ENDPOINT_URL, so the same code talks to moto locally and to S3 in AWS.
        self.s3: S3Client = s3_client or boto3.client("s3")
        self.transfer = TransferConfig(multipart_threshold=multipart_bytes, multipart_chunksize=multipart_bytes)
        self.level = level

    def uri(self, step: int) -> str:
        return f"s3://{self.bucket}/{checkpoint_prefix(self.job_id, step)}"

    def save(self, step: int, generation: int, world_size: int, tree: dict[str, Any]) -> SavedCheckpoint:
        """Uploads ``tree`` (already a snapshot) as shards, then the manifest; returns where it landed."""
        prefix = checkpoint_prefix(self.job_id, step)
        compressor = zstandard.ZstdCompressor(level=self.level)
        entries, total = [], 0
        local = self._local(step)
        if local is not None:
            shutil.rmtree(local, ignore_errors=True)
            local.mkdir(parents=True)
        for key, value in tree.items():
            blob = compressor.compress(_serialize(value))
            name = f"{key}.pt.zst"
            if local is not None:
                (local / name).write_bytes(blob)
            entries.append(self._upload(prefix, name, blob))
            total += len(blob)
        manifest = CheckpointManifest(
            job_id=self.job_id,
            step=step,
            generation=generation,
            world_size=world_size,
            created_at=datetime.now(UTC),
            instance_id=self.writer,
            shards=entries,
            metadata={"torch": torch.__version__},
        )
        body = manifest.model_dump_json().encode()
        # Written last: the checkpoint exists (and the backup handler hears of it) only once every shard is there.
        self.s3.put_object(Bucket=self.bucket, Key=prefix + MANIFEST_NAME, Body=body, ContentType="application/json")
        if local is not None:
            (local / MANIFEST_NAME).write_bytes(body)  # last here too: a local copy without it is never read
            self._prune_local()
        return SavedCheckpoint(step, self.uri(step), hashlib.sha256(body).hexdigest(), total + len(body))

    def _upload(self, prefix: str, name: str, blob: bytes) -> ShardEntry:
        """Uploads one shard with S3 computing its SHA-256 checksum, and describes it for the manifest.

        S3 checks each part against the checksum botocore computed from the bytes; the manifest names the checksum
        S3 keeps (composite of the parts for a multipart upload), computed here from the bytes as s3transfer splits
        them, and confirmed by a HEAD: the backup then verifies the shard from its metadata without reading it.
        """
        sha256 = hashlib.sha256(blob).hexdigest()
        if len(blob) >= self.transfer.multipart_threshold:
            part_size = ChunksizeAdjuster().adjust_chunksize(self.transfer.multipart_chunksize, len(blob))
            checksum = composite_checksum(blob, part_size)
        else:
            checksum = full_object_checksum(sha256)
        key = prefix + name
        extra = {"ChecksumAlgorithm": "SHA256"}
        self.s3.upload_fileobj(io.BytesIO(blob), self.bucket, key, ExtraArgs=extra, Config=self.transfer)
        head = self.s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        stored = head.get("ChecksumSHA256", "")
        if head["ContentLength"] != len(blob) or not same_s3_checksum(stored, checksum):
            raise CheckpointCorrupt(
                f"shard {name}: S3 keeps {head['ContentLength']} bytes with SHA-256 checksum {stored or 'none'}, "
                f"but {len(blob)} bytes with checksum {checksum} were uploaded"
            )
        return ShardEntry(name=name, size=len(blob), sha256=sha256, checksum_sha256=checksum)

    def _local(self, step: int) -> Path | None:
        return self.cache / f"{step:012d}" if self.cache is not None else None

    def _prune_local(self) -> None:
        assert self.cache is not None
        kept = sorted((p for p in self.cache.iterdir() if (p / MANIFEST_NAME).is_file()), reverse=True)
        for old in kept[self.CACHED :]:
            shutil.rmtree(old, ignore_errors=True)

    def exists(self, step: int) -> bool:
        """Whether the manifest of ``step`` is there (written last: its shards are there too)."""
        try:
            self.s3.head_object(Bucket=self.bucket, Key=checkpoint_prefix(self.job_id, step) + MANIFEST_NAME)
        except self.s3.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def steps(self) -> list[int]:
        """Steps that have a manifest, newest first."""
        found = []
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"jobs/{self.job_id}/ckpt/"):
            for obj in page.get("Contents", []):
                parsed = parse_manifest_key(obj["Key"])
                if parsed is not None and parsed[0] == self.job_id:
                    found.append(parsed[1])
        return sorted(found, reverse=True)

    def load(self, step: int) -> tuple[CheckpointManifest, dict[str, Any]]:
        """Downloads and verifies one checkpoint; raises CheckpointCorrupt naming what does not verify."""
        prefix = checkpoint_prefix(self.job_id, step)
        try:
            raw = self.s3.get_object(Bucket=self.bucket, Key=prefix + MANIFEST_NAME)["Body"].read()
            manifest = CheckpointManifest.model_validate_json(raw)
        except Exception as e:
            raise CheckpointCorrupt(f"manifest of step {step} does not parse: {e}") from e
        if manifest.job_id != self.job_id or manifest.step != step:
            raise CheckpointCorrupt(f"manifest of step {step} names job {manifest.job_id} step {manifest.step}")
        # The local copy serves only when its manifest is byte for byte the durable one in S3.
        local = self._local(step)
        if local is not None and not (
            (local / MANIFEST_NAME).is_file() and (local / MANIFEST_NAME).read_bytes() == raw
        ):
            local = None
        tree: dict[str, Any] = {}
        decompressor = zstandard.ZstdDecompressor()
        if local is not None:
            log.info("checkpoint step %d: reading its shards from local disk (%s)", step, local)
        for shard in manifest.shards:
            blob = self._shard(step, shard, local)
            # Only verified bytes are ever unpickled.
            value = torch.load(io.BytesIO(decompressor.decompress(blob)), weights_only=True)
            tree[shard.name.removesuffix(".pt.zst")] = value
        return manifest, tree

    def _shard(self, step: int, shard: ShardEntry, local: Path | None) -> bytes:
        """A shard's bytes, verified: from local disk when there and intact, else from S3."""
        if local is not None:
            try:
                blob = (local / shard.name).read_bytes()
            except OSError:
                blob = b""
            if len(blob) == shard.size and hashlib.sha256(blob).hexdigest() == shard.sha256:
                return blob
            log.warning("local copy of shard %s of step %d does not verify: reading it from S3", shard.name, step)
        key = checkpoint_prefix(self.job_id, step) + shard.name
        blob = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        if len(blob) != shard.size:
            raise CheckpointCorrupt(f"shard {shard.name} of step {step} is {len(blob)} bytes, not {shard.size}")
        if hashlib.sha256(blob).hexdigest() != shard.sha256:
            raise CheckpointCorrupt(f"shard {shard.name} of step {step} does not match its sha256")
        return blob

    def load_newest(self, max_step: int | None = None) -> tuple[CheckpointManifest, dict[str, Any]] | None:
        """The newest checkpoint that verifies; older ones are tried in turn, each rejection logged."""
        for step in self.steps():
            if max_step is not None and step > max_step:
                continue
            try:
                return self.load(step)
            except CheckpointCorrupt as e:
                log.warning("checkpoint rejected, trying the next older one: %s", e)
            except self.s3.exceptions.NoSuchKey as e:
                log.warning("checkpoint rejected, trying the next older one: step %d is missing a shard (%s)", step, e)
        return None


class AsyncCheckpointer:
    """Uploads snapshots on a background thread, one at a time, while training goes on.

    The thread runs ``niceness`` below the training's priority (Linux): on a host whose cores training keeps busy,
    serializing, compressing and sending the checkpoint takes the CPU training leaves, rather than a share of it.
    """

    def __init__(self, store: S3CheckpointStore, niceness: int = UPLOAD_NICENESS) -> None:
        self.store = store
        self.niceness = niceness
        self._thread: threading.Thread | None = None
        self.last: SavedCheckpoint | None = None
        self.error: BaseException | None = None

    def save_async(
        self,
        step: int,
        generation: int,
        world_size: int,
        tree: dict[str, Any],
        on_done: Callable[[SavedCheckpoint], None] | None = None,
        *,
        copy: bool = True,
    ) -> None:
        """Snapshots ``tree`` now (the step boundary) and uploads it in the background.

        ``copy=False`` when ``tree`` already is a snapshot nothing changes in place (``TorchState.committed()``: each
        commit makes new tensors), so that the step boundary does not copy the whole state a second time.
        """
        self.wait()  # one upload in flight: a newer checkpoint waits for the older one rather than racing it
        frozen = snapshot(tree) if copy else tree

        def upload() -> None:
            _lower_thread_priority(self.niceness)
            try:
                saved = self.store.save(step, generation, world_size, frozen)
                self.last = saved
                log.info("checkpoint step %d saved to %s (%d bytes)", step, saved.uri, saved.size_bytes)
                if on_done is not None:
                    on_done(saved)
            except BaseException as e:  # reported by wait(); training must not die of a failed upload
                self.error = e
                log.exception("checkpoint step %d failed to upload", step)

        self._thread = threading.Thread(target=upload, name=f"checkpoint-{step}", daemon=True)
        self._thread.start()

    def save(self, step: int, generation: int, world_size: int, tree: dict[str, Any]) -> SavedCheckpoint:
        """A blocking save (emergencies: the process is about to go)."""
        self.wait()
        saved = self.store.save(step, generation, world_size, snapshot(tree))
        self.last = saved
        log.info("checkpoint step %d saved to %s (%d bytes)", step, saved.uri, saved.size_bytes)
        return saved

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
