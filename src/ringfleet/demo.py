"""`ringfleet demo`: brings the local cloud up and routes one event of each kind end to end through the handlers.

This is the foundation's demo: it shows the wiring of template.yaml working locally. The spot-interrupted
training run (fleet emulator, workers, report, timeline) builds on it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ringfleet.contracts.checkpoints import CheckpointManifest, ShardEntry, checkpoint_prefix, encode_manifest
from ringfleet.local.cloud import DEFAULT_BROKER_URL, LocalCloud, broker_reachable
from ringfleet.local.emit import emit
from ringfleet.local.router import Delivery

__all__ = ["ensure_broker", "run_demo"]


def ensure_broker(url: str = DEFAULT_BROKER_URL, wait_s: float = 60.0) -> None:
    """Starts RabbitMQ when it does not answer (as on a fresh machine), or says how to."""
    if broker_reachable(url):
        return
    server = shutil.which("rabbitmq-server")
    if server is None:
        raise SystemExit(
            "RabbitMQ does not answer on 127.0.0.1:5672 and rabbitmq-server is not installed: "
            "install it (apt-get install rabbitmq-server) or set RINGFLEET_BROKER_URL"
        )
    print("RabbitMQ is not running: starting it (rabbitmq-server -detached)", flush=True)
    subprocess.run([server, "-detached"], check=False)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if broker_reachable(url):
            return
        time.sleep(1)
    raise SystemExit(f"RabbitMQ did not come up within {wait_s:.0f} s")


def _step(
    cloud: LocalCloud,
    title: str,
    event_file: Path,
    function: str,
    *,
    body: bytes | None = None,
    overrides: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Delivery:
    event = json.loads(event_file.read_text())
    if overrides is not None:
        event = overrides(event)
    print(f"\n== {title}", flush=True)
    before = len(cloud.router.deliveries)
    for action in emit(cloud.ctx, event, body=body):
        print(f"   sent: {action}", flush=True)
    done = cloud.router.wait_for(lambda ds: any(d.function == function for d in ds[before:]), timeout=30)
    delivery = next(d for d in done[before:] if d.function == function)
    r = delivery.result
    failures = len(r.result.get("batchItemFailures") or []) if r.ok and isinstance(r.result, dict) else 0
    outcome = "ok" if r.ok and not failures else f"{failures} record(s) rejected" if r.ok else r.error_message
    print(
        f"   delivered to {function} via {delivery.source} ({delivery.source_type}) in the Lambda event shape: "
        f"{outcome} [{r.duration_ms:.0f} ms]",
        flush=True,
    )
    for line in r.logs.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("INFO", "WARNING", "ERROR"):
            extra = entry.get("reason") or entry.get("job_id") or ""
            print(f"   {entry['level'].lower()}: {entry.get('message')} {extra}".rstrip(), flush=True)
    return delivery


def _write_checkpoint_shard(cloud: LocalCloud, job_id: str, step: int) -> bytes:
    """Uploads one shard as a worker would and returns the manifest that lists it (written last, by emit)."""
    shard = b"demo shard: a worker's zstd-compressed state would be here"
    prefix = checkpoint_prefix(job_id, step)
    cloud.client("s3").put_object(
        Bucket=cloud.ctx.resolve({"Ref": "CheckpointBucket"}), Key=f"{prefix}model.zst", Body=shard
    )
    manifest = CheckpointManifest(
        job_id=job_id,
        step=step,
        generation=1,
        world_size=1,
        created_at=datetime.now(UTC),
        shards=[ShardEntry(name="model.zst", size=len(shard), sha256=hashlib.sha256(shard).hexdigest())],
    )
    return encode_manifest(manifest)


def run_demo(template: str = "template.yaml", fast: bool = False) -> int:
    ensure_broker()
    events = Path(template).resolve().parent / "events"
    print("Starting the local cloud: moto server, template.yaml's resources, the event router", flush=True)
    with LocalCloud(template) as cloud:
        print(f"AWS at {cloud.endpoint}; RabbitMQ at 127.0.0.1:5672", flush=True)
        for kind, names in sorted(cloud.created.items()):
            print(f"  {kind}: {len(names)}", flush=True)
        job_file = events / "messages" / "job_submitted.json"
        job_id = json.loads(job_file.read_text())["job_id"]
        deliveries = [
            _step(cloud, "A job submitted by an app over RabbitMQ", job_file, "JobIntakeFunction"),
            _step(
                cloud,
                "A checkpoint of that job lands in S3 (shard, then manifest): verified and backed up",
                events / "s3_object_created.json",
                "CheckpointBackupFunction",
                body=_write_checkpoint_shard(cloud, job_id, step=120),
            ),
            _step(
                cloud,
                "A spot interruption warning, put on EventBridge (for an instance no job runs on)",
                events / "ec2_spot_interruption_warning.json",
                "NodeRecoveryFunction",
            ),
        ]
    ok = all(d.result.ok for d in deliveries)
    print("\nEvery event reached the handler template.yaml wires to it." if ok else "\nSome deliveries failed.")
    return 0 if ok else 1
