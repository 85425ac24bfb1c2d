"""CheckpointObjects on S3: read manifests, check shards by their metadata, copy server-side, delete old ones.

No shard body is ever read here: a shard is verified by the SHA-256 checksum S3 computed when the worker uploaded
it (``HeadObject`` with ``ChecksumMode``), and copied by S3 itself — exactly the version verified (its ``VersionId``
in the versioned checkpoint bucket, so a shard overwritten after verification is not what gets copied; and
``CopySourceIfMatch`` with its ETag), and checked once more by the checksum S3 computes for the copy.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from ringfleet.backup.ports import ShardChanged, StoredShard
from ringfleet.contracts.checkpoints import MANIFEST_NAME, checkpoint_prefix, full_object_checksum, same_s3_checksum

if TYPE_CHECKING:
    from collections.abc import Mapping

    from ringfleet.contracts import CheckpointManifest, ShardEntry

__all__ = ["S3CheckpointObjects"]

#: The largest object one CopyObject copies; larger ones are copied in parts (UploadPartCopy).
COPY_OBJECT_LIMIT = 5 * 1024**3
#: Copies in flight at once: shards side by side, and a large shard's parts side by side. A server-side copy's time
#: is S3's, not this function's, so a checkpoint copies in about the time of its largest part, not of all its bytes.
COPY_CONCURRENCY = 16


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _missing(exc: ClientError) -> bool:
    return _code(exc) in {"404", "NoSuchKey", "NotFound"}


def _changed(exc: ClientError) -> bool:
    return _code(exc) in {"412", "PreconditionFailed"}


def _source(bucket: str, key: str, verified: StoredShard) -> dict[str, str]:
    """CopySource naming the verified version itself (in a versioned bucket)."""
    source = {"Bucket": bucket, "Key": key}
    if verified.version_id:
        source["VersionId"] = verified.version_id
    return source


class S3CheckpointObjects:
    def __init__(
        self,
        *,
        s3_client: Any | None = None,
        copy_object_limit: int = COPY_OBJECT_LIMIT,
        concurrency: int = COPY_CONCURRENCY,
    ) -> None:
        # A connection for every copy in flight: shards, each with its parts.
        pool = Config(max_pool_connections=concurrency * concurrency)
        self._s3: Any = s3_client or boto3.client("s3", config=pool)
        self.copy_object_limit, self.concurrency = copy_object_limit, concurrency

    def read(self, bucket: str, key: str, *, max_bytes: int, version_id: str | None = None) -> bytes:
        obj = self._s3.get_object(Bucket=bucket, Key=key, **({"VersionId": version_id} if version_id else {}))
        if obj["ContentLength"] > max_bytes:
            obj["Body"].close()
            raise ValueError(f"s3://{bucket}/{key} is {obj['ContentLength']} bytes, more than {max_bytes}")
        data: bytes = obj["Body"].read()
        return data

    def stored(self, bucket: str, key: str) -> StoredShard | None:
        try:
            head = self._s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
        except ClientError as exc:
            if _missing(exc):
                return None
            raise
        return StoredShard(
            size=head["ContentLength"],
            checksum_sha256=head.get("ChecksumSHA256", ""),
            etag=head["ETag"],
            # "null": an object stored before versioning was enabled, copied by that name too
            version_id=head.get("VersionId"),
        )

    def copy_checkpoint(
        self,
        manifest: CheckpointManifest,
        manifest_body: bytes,
        verified: Mapping[str, StoredShard],
        source_bucket: str,
        target_bucket: str,
    ) -> None:
        # Shards first and the manifest last: in the backup bucket too, a checkpoint exists once its manifest does.
        for shard in manifest.shards:
            key = manifest.shard_key(shard)
            try:
                self._copy_shard(shard, verified[shard.name], source_bucket, target_bucket, key)
            except ClientError as exc:
                if _changed(exc):
                    raise ShardChanged(
                        f"shard {shard.name} changed after it was verified: S3 refused its copy"
                    ) from exc
                raise
        # The manifest's bytes as read and verified, rather than a copy of whatever the key holds by now.
        self._s3.put_object(
            Bucket=target_bucket,
            Key=manifest.key,
            Body=manifest_body,
            ContentType="application/json",
            ChecksumAlgorithm="SHA256",
        )

    def _copy_shard(self, shard: ShardEntry, source: StoredShard, bucket: str, target_bucket: str, key: str) -> None:
        """One shard, server-side. CopyObject makes S3 compute the copy's full-object SHA-256, which must be the
        manifest's sha256 of the bytes (what a restore verifies); a larger, composite one is copied in the source's
        own parts, so that the copy's composite checksum must be the manifest's."""
        if source.size <= self.copy_object_limit or shard.checksum_parts is None:
            result = self._s3.copy_object(
                Bucket=target_bucket,
                Key=key,
                CopySource=_source(bucket, key, source),
                CopySourceIfMatch=source.etag,
                ChecksumAlgorithm="SHA256",
            )["CopyObjectResult"]
            copied, expected = result.get("ChecksumSHA256", ""), full_object_checksum(shard.sha256)
        else:
            self._copy_in_parts(source, bucket, target_bucket, key)
            copied = self._s3.head_object(Bucket=target_bucket, Key=key, ChecksumMode="ENABLED").get(
                "ChecksumSHA256", ""
            )
            expected = str(shard.checksum_sha256)
        if not same_s3_checksum(copied, expected):
            raise ShardChanged(
                f"shard {shard.name} changed after it was verified: its copy has SHA-256 checksum {copied or 'none'}, "
                f"the manifest says {expected}"
            )

    def _copy_in_parts(self, source: StoredShard, bucket: str, target_bucket: str, key: str) -> None:
        """UploadPartCopy in the source's part size (its first part's), each part only from the verified version."""
        pinned = {"VersionId": source.version_id} if source.version_id else {}
        part_size = self._s3.head_object(Bucket=bucket, Key=key, PartNumber=1, **pinned)["ContentLength"]
        upload_id = self._s3.create_multipart_upload(Bucket=target_bucket, Key=key, ChecksumAlgorithm="SHA256")[
            "UploadId"
        ]

        def copy_part(number: int) -> dict[str, Any]:
            start = (number - 1) * part_size
            copied = self._s3.upload_part_copy(
                Bucket=target_bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=_source(bucket, key, source),
                CopySourceRange=f"bytes={start}-{min(start + part_size, source.size) - 1}",
                CopySourceIfMatch=source.etag,
            )["CopyPartResult"]
            part = {"ETag": copied["ETag"], "PartNumber": number}
            if "ChecksumSHA256" in copied:
                part["ChecksumSHA256"] = copied["ChecksumSHA256"]
            return part

        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="copy-part") as pool:
                parts = list(pool.map(copy_part, range(1, -(-source.size // part_size) + 1)))
            self._s3.complete_multipart_upload(
                Bucket=target_bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            self._s3.abort_multipart_upload(Bucket=target_bucket, Key=key, UploadId=upload_id)
            raise

    def delete_checkpoint(self, bucket: str, job_id: str, step: int) -> None:
        prefix = checkpoint_prefix(job_id, step)
        self._s3.delete_object(Bucket=bucket, Key=prefix + MANIFEST_NAME)
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self._s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
