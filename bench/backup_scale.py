"""Benchmark: the checkpoint backup handler on a 10 MiB checkpoint and on a 4 x 1 GiB one, as ratios big / small.

Both checkpoints have 4 shards, uploaded with S3 SHA-256 checksums (composite, in 64 MiB parts, above 64 MiB) to the
local cloud's moto server (template.yaml's buckets and tables). Each run invokes the real handler
(``services/checkpoint_backup/app.py``) in a process of its own with the function's environment, as Lambda would,
and measures there: the handler's duration, its peak Python allocations (tracemalloc) and peak RSS, and the bytes of
shard bodies it asked S3 for (GetObject on a key that is not a manifest: must be 0). Between runs the checkpoint's
backup, catalog row and idempotency records are removed, so every run backs up the same checkpoint from scratch.

moto keeps each object in a spooled temporary file, and copies an object by reading it into memory whole: the big
checkpoint needs ~4 GiB of /tmp and a few GiB of memory in the moto server while it is copied (``--big-shard-mib``
makes it smaller on a machine without them; the size used is printed).

    .venv/bin/python bench/backup_scale.py [--runs 3] [--big-shard-mib 1024]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))

import boto3  # noqa: E402
from boto3.s3.transfer import TransferConfig  # noqa: E402

MiB = 1 << 20
PART = 64 * MiB
SHARDS = 4
FUNCTION = "CheckpointBackupFunction"


def shard_file(size: int, directory: Path) -> tuple[Path, str, str]:
    """A sparse file of ``size`` bytes (generated data: no disk, no memory), its sha256 and S3 SHA-256 checksum."""
    from ringfleet.contracts.checkpoints import full_object_checksum

    path = directory / f"shard-{size}"
    with open(path, "wb") as f:
        f.truncate(size)
    full, parts = hashlib.sha256(), []
    with open(path, "rb") as f:
        while chunk := f.read(PART):
            full.update(chunk)
            parts.append(hashlib.sha256(chunk).digest())
    if size < PART:
        return path, full.hexdigest(), full_object_checksum(full.hexdigest())
    # composite_checksum's result, from the parts' digests (rather than the whole file in memory)
    composite = base64.b64encode(hashlib.sha256(b"".join(parts)).digest()).decode()
    return path, full.hexdigest(), f"{composite}-{len(parts)}"


def seed(cloud: Any, job_id: str, first: int) -> str:
    """A running job with one member, whose checkpoints the backup accepts; returns the member's instance id."""
    sys.path.insert(0, str(ROOT))
    from ringfleet.adapters.dynamodb import DynamoDbJobRepository, DynamoDbNodeRepository
    from ringfleet.core.ports import SystemClock
    from tests.builders import running_job

    job, (node,) = running_job(job_id, members=1, first=first)
    resource = cloud.ctx.resource("dynamodb")
    clock = SystemClock()
    DynamoDbJobRepository(str(cloud.ctx.resolve({"Ref": "JobsTable"})), clock=clock, boto3_resource=resource).create(
        job
    )
    DynamoDbNodeRepository(str(cloud.ctx.resolve({"Ref": "NodesTable"})), clock=clock, boto3_resource=resource).put(
        node
    )
    return node.instance_id


def upload(s3: Any, bucket: str, job_id: str, shard_size: int, directory: Path, writer: str) -> str:
    """Uploads a checkpoint of SHARDS shards of ``shard_size`` bytes and its manifest (written by ``writer``, a member
    of the job); returns the manifest key."""
    from datetime import UTC, datetime

    from ringfleet.contracts import CheckpointManifest, ShardEntry, checkpoint_prefix, encode_manifest

    path, sha256, checksum = shard_file(shard_size, directory)
    prefix = checkpoint_prefix(job_id, 1)
    config = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART)
    entries = []
    for i in range(SHARDS):
        name = f"rank-{i}.pt.zst"
        s3.upload_file(str(path), bucket, prefix + name, ExtraArgs={"ChecksumAlgorithm": "SHA256"}, Config=config)
        entries.append(ShardEntry(name=name, size=shard_size, sha256=sha256, checksum_sha256=checksum))
    path.unlink()
    manifest = CheckpointManifest(
        job_id=job_id,
        step=1,
        generation=1,
        world_size=SHARDS,
        created_at=datetime.now(UTC),
        instance_id=writer,
        shards=entries,
    )
    s3.put_object(Bucket=bucket, Key=prefix + "manifest.json", Body=encode_manifest(manifest))
    return prefix + "manifest.json"


def sqs_event(s3: Any, bucket: str, key: str) -> dict[str, Any]:
    """The sample S3 notification through SQS (events/), naming this manifest."""
    head = s3.head_object(Bucket=bucket, Key=key)
    event: dict[str, Any] = json.loads((ROOT / "events/s3_object_created_sqs.json").read_text())
    notification = json.loads(event["Records"][0]["body"])
    s3_part = notification["Records"][0]["s3"]
    s3_part["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
    s3_part["object"].update(key=key, size=head["ContentLength"], eTag=head["ETag"].strip('"'))
    event["Records"][0]["body"] = json.dumps(notification)
    return event


def child(event_path: str) -> None:
    """In the function's environment: invokes the handler once, prints what it measured as JSON."""
    sys.path.insert(0, os.getcwd())
    shard_bytes, manifest_reads = [0], [0]

    def remember_key(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["bench_key"] = params["Key"]

    def count_body(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if str(context.get("bench_key", "")).endswith("/manifest.json"):
            manifest_reads[0] += 1
        else:
            shard_bytes[0] += int(parsed.get("ContentLength", 0))

    # on the default session before the handler makes its clients: every client of it inherits these
    boto3.setup_default_session()
    session = boto3.DEFAULT_SESSION
    assert session is not None
    events = session.events
    events.register("before-parameter-build.s3.GetObject", remember_key)
    events.register("after-call.s3.GetObject", count_body)
    from ringfleet_local.lambda_host import LambdaContext

    app = __import__("app")
    event = json.loads(Path(event_path).read_text())
    tracemalloc.start()
    started = time.perf_counter()
    result = app.handler(event, LambdaContext("bench", (time.time() + 300) * 1000))
    duration = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    measured = {"s": duration, "traced": peak, "rss": maxrss, "shard_bytes": shard_bytes[0]}
    print(json.dumps({"result": result, "manifest_reads": manifest_reads[0], **measured}))


def reset(cloud: Any, job_id: str) -> None:
    """Forgets the last backup of ``job_id``: its copy (every version), catalog row and idempotency records."""
    s3, ddb = cloud.client("s3"), cloud.client("dynamodb")
    backups = str(cloud.ctx.resolve({"Ref": "BackupBucket"}))
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=backups, Prefix=f"jobs/{job_id}/"):
        for v in page.get("Versions", []) + page.get("DeleteMarkers", []):
            s3.delete_object(Bucket=backups, Key=v["Key"], VersionId=v["VersionId"])
    ddb.delete_item(
        TableName=str(cloud.ctx.resolve({"Ref": "CheckpointsTable"})),
        Key={"job_id": {"S": job_id}, "step": {"N": "1"}},
    )
    table = str(cloud.ctx.resolve({"Ref": "IdempotencyTable"}))
    for item in ddb.scan(TableName=table, ProjectionExpression="id")["Items"]:
        ddb.delete_item(TableName=table, Key={"id": item["id"]})


def invoke(cloud: Any, event: dict[str, Any], job_id: str, directory: Path) -> dict[str, Any]:
    fn = cloud.ctx.function(FUNCTION)
    event_path = directory / "event.json"
    event_path.write_text(json.dumps(event))
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(event_path)],
        env=cloud.ctx.function_environment(FUNCTION),
        cwd=str(fn.code_uri),
        capture_output=True,
        text=True,
        check=True,
    )
    measured: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if measured["manifest_reads"] != 1:  # the counting hook saw the handler's reads: its 0 shard bytes mean 0
        raise RuntimeError(f"the handler read its manifest {measured['manifest_reads']} times, not once")
    if measured["result"].get("batchItemFailures"):
        raise RuntimeError(f"the backup failed: {out.stdout[-3000:]}{out.stderr[-3000:]}")
    catalog = cloud.ctx.resolve({"Ref": "CheckpointsTable"})
    row = cloud.client("dynamodb").get_item(TableName=catalog, Key={"job_id": {"S": job_id}, "step": {"N": "1"}})
    if row.get("Item", {}).get("status", {}).get("S") != "DURABLE":
        raise RuntimeError(f"the checkpoint was not backed up: {row.get('Item')}\n{out.stdout[-3000:]}")
    return measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big-shard-mib", type=int, default=1024)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    from ringfleet_local.cloud import LocalCloud

    sizes = {"small": 10 * MiB // SHARDS, "big": args.big_shard_mib * MiB}
    with (
        tempfile.TemporaryDirectory(prefix="backup-scale-") as tmp,
        LocalCloud(ROOT / "template.yaml", route=False) as cloud,
    ):
        s3 = cloud.client("s3")
        bucket = str(cloud.ctx.resolve({"Ref": "CheckpointBucket"}))
        medians: dict[str, dict[str, float]] = {}
        for n, (label, shard_size) in enumerate(sizes.items()):
            job_id = f"bench-{label}"
            writer = seed(cloud, job_id, first=0xBE00 + n)
            started = time.perf_counter()
            event = sqs_event(s3, bucket, upload(s3, bucket, job_id, shard_size, Path(tmp), writer))
            print(f"{label}: {SHARDS} x {shard_size / MiB:g} MiB uploaded in {time.perf_counter() - started:.1f} s")
            runs = []
            for _ in range(args.runs):
                reset(cloud, job_id)
                runs.append(invoke(cloud, event, job_id, Path(tmp)))
            medians[label] = {k: statistics.median(r[k] for r in runs) for k in ("s", "traced", "rss", "shard_bytes")}
            m = medians[label]
            print(
                f"{label}: {SHARDS * shard_size / MiB:g} MiB checkpoint backed up in {m['s'] * 1000:.0f} ms, "
                f"peak traced {m['traced'] / MiB:.1f} MiB, peak RSS {m['rss'] / MiB:.0f} MiB, "
                f"shard bytes read {m['shard_bytes']:.0f} (median of {args.runs})"
            )
        small, big = medians["small"], medians["big"]
        print(
            f"big / small ({sizes['big'] // sizes['small']}x the bytes): duration {big['s'] / small['s']:.2f}x, "
            f"peak traced memory {big['traced'] / small['traced']:.2f}x, peak RSS {big['rss'] / small['rss']:.2f}x; "
            f"shard bytes read by the handler: {small['shard_bytes']:.0f} and {big['shard_bytes']:.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
