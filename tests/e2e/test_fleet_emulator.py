"""The fleet emulator: an assigned instance becomes a real worker; chaos sends what AWS sends, then takes it away."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from ringfleet_local.clock import ManualClock
from ringfleet_local.cloud import LocalCloud, free_port
from ringfleet_local.fleet import STACK_TAG, FleetEmulator
from ringfleet_local.router import Delivery

from tests.conftest import ROOT
from tests.e2e.support import wait_until

pytestmark = pytest.mark.e2e

#: The program each emulated instance's agent runs: the digits example, paced, for as long as the test needs.
DIGITS = ("--", "python", str(ROOT / "examples" / "digits" / "train.py"), "--steps", "100000", "--step-delay", "0.02")

JOB = "emu-job"


@pytest.fixture
def cloud(broker_url: str) -> Iterator[LocalCloud]:
    with LocalCloud(ROOT / "template.yaml", broker_url=broker_url, clock=ManualClock()) as c:
        yield c


def launch_instance(cloud: LocalCloud) -> str:
    out = cloud.client("ec2").run_instances(
        ImageId="ami-12c6146b",
        InstanceType="g4dn.xlarge",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": STACK_TAG, "Value": cloud.ctx.stack}]}],
    )
    return str(out["Instances"][0]["InstanceId"])


def recovery_saw(deliveries: list[Delivery], instance: str, detail_type: str) -> int:
    return sum(
        1
        for d in deliveries
        if d.function == "NodeRecoveryFunction"
        for r in d.event["Records"]
        if json.loads(r["body"])["detail-type"] == detail_type and instance in r["body"]
    )


def test_interruption_with_notice_checkpoints_then_terminates(cloud: LocalCloud, tmp_path: Path) -> None:
    # given a running instance of the stack assigned to a job, and an emulator that sends every event twice
    instance = launch_instance(cloud)
    port = free_port()
    emulator = FleetEmulator(
        cloud.ctx,
        job_of=lambda i: JOB if i == instance else None,
        worker_args=lambda job, i: [
            "--broker-url",
            "none",
            "--static-world",
            f"0:1:127.0.0.1:{port}",
            "--checkpoint-every",
            "100000",
            *DIGITS,
        ],
        log_dir=tmp_path,
        duplicate_events=True,
    )
    try:
        emulator.poll()
        # then it runs a real worker for it, which trains
        assert instance in emulator.instances
        log = emulator.instances[instance].log_path
        wait_until(lambda: "step " in log.read_text(), 90, "the worker's first progress line")
        # when the instance gets a spot interruption with a 5 s grace period
        emulator.interrupt(instance, grace_s=5)
        # then the worker sees the notice on its metadata endpoint and writes an emergency checkpoint
        s3 = cloud.client("s3")
        bucket = cloud.ctx.resolve({"Ref": "CheckpointBucket"})

        def manifests() -> list[str]:
            listing = s3.list_objects_v2(Bucket=bucket, Prefix=f"jobs/{JOB}/ckpt/").get("Contents", [])
            return [o["Key"] for o in listing if o["Key"].endswith("manifest.json")]

        wait_until(lambda: bool(manifests()), 30, "an emergency checkpoint in S3")
        # and node_recovery got the warning and the rebalance recommendation, each delivered twice
        cloud.router.wait_for(
            lambda ds: (
                recovery_saw(ds, instance, "EC2 Spot Instance Interruption Warning") == 2
                and recovery_saw(ds, instance, "EC2 Instance Rebalance Recommendation") == 2
            )
        )
        # and after the grace period the instance is terminated, its state changes are sent and its worker is gone
        cloud.router.wait_for(
            lambda ds: recovery_saw(ds, instance, "EC2 Instance State-change Notification") == 4, timeout=30
        )
        state = cloud.client("ec2").describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
        assert state["State"]["Name"] == "terminated"
        assert instance not in emulator.instances
        emulator.poll()
        assert instance not in emulator.instances  # a terminated instance is never started again
    finally:
        emulator.stop()


def test_hard_kill_gives_no_notice(cloud: LocalCloud, tmp_path: Path) -> None:
    # given a worker on an assigned instance
    instance = launch_instance(cloud)
    port = free_port()
    emulator = FleetEmulator(
        cloud.ctx,
        job_of=lambda i: JOB,
        worker_args=lambda job, i: [
            "--broker-url",
            "none",
            "--static-world",
            f"0:1:127.0.0.1:{port}",
            *DIGITS,
        ],
        log_dir=tmp_path,
    )
    try:
        emulator.poll()
        process = emulator.instances[instance].process
        # when it is hard-killed
        emulator.hard_kill(instance)
        # then the process is dead at once, the instance terminated, and no cloud event was sent about it (only the
        # 'running' state change its first poll sent, whenever the router delivers it)
        assert process.poll() is not None
        state = cloud.client("ec2").describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]
        assert state["State"]["Name"] == "terminated"
        about = [json.dumps(d.event) for d in cloud.router.deliveries if instance in json.dumps(d.event)]
        assert all("running" in e and "terminat" not in e and "Interruption" not in e for e in about), about
    finally:
        emulator.stop()
