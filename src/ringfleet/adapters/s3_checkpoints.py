"""CheckpointObjects on S3: read manifests, digest shards, server-side copy to the backup bucket, delete old ones."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import boto3
from botocore.exceptions import ClientError

from ringfleet.backup.ports import ShardDigest
from ringfleet.contracts.checkpoints import MANIFEST_NAME, checkpoint_prefix

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointManifest

__all__ = ["S3CheckpointObjects"]

_CHUNK = 8 * 1024 * 1024


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}


class S3CheckpointObjects:
    def __init__(self, *, s3_client: Any | None = None) -> None:
        self._s3: Any = s3_client or boto3.client("s3")

    def read(self, bucket: str, key: str, *, max_bytes: int) -> bytes:
        obj = self._s3.get_object(Bucket=bucket, Key=key)
        if obj["ContentLength"] > max_bytes:
            obj["Body"].close()
            raise ValueError(f"s3://{bucket}/{key} is {obj['ContentLength']} bytes, more than {max_bytes}")
        data: bytes = obj["Body"].read()
        return data

    def digest(self, bucket: str, key: str) -> ShardDigest | None:
        try:
            obj = self._s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        sha, size = hashlib.sha256(), 0
        for chunk in obj["Body"].iter_chunks(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
        return ShardDigest(size=size, sha256=sha.hexdigest())

    def copy_checkpoint(self, manifest: CheckpointManifest, source_bucket: str, target_bucket: str) -> None:
        # Shards first and the manifest last: in the backup bucket too, a checkpoint exists once its manifest does.
        for key in [manifest.shard_key(s) for s in manifest.shards] + [manifest.key]:
            # The managed copy is server-side, multipart above 8 MiB (so shards past 5 GiB copy too).
            self._s3.copy({"Bucket": source_bucket, "Key": key}, target_bucket, key)

    def delete_checkpoint(self, bucket: str, job_id: str, step: int) -> None:
        prefix = checkpoint_prefix(job_id, step)
        self._s3.delete_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self._s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
