"""The local cloud on the real template.yaml: each event reaches exactly the handler the template wires to it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from ringfleet_local.clock import ManualClock
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.emit import emit
from ringfleet_local.router import Delivery

from ringfleet.adapters.rabbitmq import publish
from ringfleet.contracts.broker import JOBS_QUEUE, WORKER_EVENTS_QUEUE
from tests.conftest import ROOT, purge_queue
from tests.e2e.support import carrying

pytestmark = pytest.mark.e2e

EVENTS = ROOT / "events"


def load(name: str) -> dict:
    return json.loads((EVENTS / name).read_text())


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(scope="module")
def cloud(broker_url: str, clock: ManualClock) -> Iterator[LocalCloud]:
    for q in (JOBS_QUEUE, WORKER_EVENTS_QUEUE):
        purge_queue(broker_url, q)
    with LocalCloud(ROOT / "template.yaml", broker_url=broker_url, clock=clock) as c:
        yield c


def test_spot_interruption_warning_put_on_eventbridge_reaches_node_recovery_only(cloud: LocalCloud) -> None:
    # given the sample warning for an instance id no other test uses
    instance = "i-0e2e0000000000001"
    event = load("ec2_spot_interruption_warning.json")
    event["detail"]["instance-id"] = instance
    # when it is put on EventBridge, as EC2 would
    emit(cloud.ctx, event)
    # then NodeRecoveryFunction, and only it, handles it from an SQS batch, without failures
    done = cloud.router.wait_for(lambda ds: bool(carrying(ds, instance)))
    hits = carrying(done, instance)
    assert {d.function for d in hits} == {"NodeRecoveryFunction"}
    record = hits[0].event["Records"][0]
    assert record["eventSource"] == "aws:sqs"
    body = json.loads(record["body"])
    assert body["detail-type"] == "EC2 Spot Instance Interruption Warning"
    assert body["account"] == "123456789012"
    assert hits[0].result.ok and hits[0].result.result == {"batchItemFailures": []}


def test_checkpoint_manifest_put_in_s3_reaches_checkpoint_backup_only(cloud: LocalCloud) -> None:
    # given a manifest key for a step no other test writes
    key = "jobs/e2e-job/ckpt/000000000777/manifest.json"
    bucket = cloud.ctx.resolve({"Ref": "CheckpointBucket"})
    # when a worker writes it with put_object
    cloud.client("s3").put_object(Bucket=bucket, Key=key, Body=b"{}")
    # then CheckpointBackupFunction gets the S3 notification (via SQS) with the key as S3 writes it
    done = cloud.router.wait_for(lambda ds: bool(carrying(ds, "000000000777")))
    hits = carrying(done, "000000000777")
    assert {d.function for d in hits} == {"CheckpointBackupFunction"}
    notification = json.loads(hits[0].event["Records"][0]["body"])
    s3_record = notification["Records"][0]
    assert s3_record["eventSource"] == "aws:s3"
    assert s3_record["s3"]["object"]["key"] == key  # moto percent-encodes '/', S3 does not
    assert "sequencer" in s3_record["s3"]["object"] and "responseElements" in s3_record
    assert hits[0].result.ok and hits[0].result.result == {"batchItemFailures": []}


def test_job_submitted_published_on_rabbitmq_reaches_job_intake_only(cloud: LocalCloud, broker_url: str) -> None:
    # given a valid JobSubmitted for a job no other test submits
    message = load("messages/job_submitted.json")
    message["job_id"] = "e2e-intake-job"
    # when an app publishes it on the jobs queue
    asyncio.run(publish(broker_url, json.dumps(message).encode(), queue=JOBS_QUEUE))
    # then JobIntakeFunction receives it as an aws:rmq event and admits the job
    done = cloud.router.wait_for(lambda ds: bool(carrying(ds, "e2e-intake-job")))
    hits = carrying(done, "e2e-intake-job")
    assert {d.function for d in hits} == {"JobIntakeFunction"}
    assert hits[0].event["eventSource"] == "aws:rmq"
    assert hits[0].result.ok
    assert [(o["job_id"], o["outcome"]) for o in hits[0].result.result["outcomes"]] == [("e2e-intake-job", "admitted")]


def test_job_intake_survives_a_message_with_a_decimal_header(cloud: LocalCloud, broker_url: str) -> None:
    # given a legal AMQP message whose headers hold a decimal (and a timestamp-less byte array), as any app may send
    odd = load("messages/job_submitted.json") | {"job_id": "e2e-decimal-header"}
    headers = {"price": Decimal("1.25"), "raw": bytearray(b"ab"), "nested": {"n": [Decimal("-0.5")]}}
    asyncio.run(publish(broker_url, json.dumps(odd).encode(), queue=JOBS_QUEUE, headers=headers))
    # when an ordinary JobSubmitted follows it
    after = load("messages/job_submitted.json") | {"job_id": "e2e-after-decimal"}
    asyncio.run(publish(broker_url, json.dumps(after).encode(), queue=JOBS_QUEUE))
    # then job intake handled both: the odd one with its headers rendered, and intake consumes on
    done = cloud.router.wait_for(
        lambda ds: bool(carrying(ds, "e2e-decimal-header")) and bool(carrying(ds, "e2e-after-decimal"))
    )
    odd_delivery = carrying(done, "e2e-decimal-header")[0]
    (messages,) = odd_delivery.event["rmqMessagesByQueue"].values()
    assert messages[0]["basicProperties"]["headers"]["price"] == 1.25
    assert all(d.result.ok for d in carrying(done, "e2e-after-decimal"))


def test_malformed_cloud_event_is_reported_and_ends_in_the_dlq(cloud: LocalCloud) -> None:
    # given a warning without its instance-id, and a short visibility timeout so the retries come quickly
    sqs = cloud.client("sqs")
    queue = cloud.ctx.resolve({"Ref": "RecoveryQueue"})
    dlq = cloud.ctx.resolve({"Ref": "RecoveryDLQ"})
    sqs.set_queue_attributes(QueueUrl=queue, Attributes={"VisibilityTimeout": "1"})
    event = load("ec2_spot_interruption_warning.json")
    del event["detail"]["instance-id"]
    event["id"] = "e2e-malformed-0001"
    # when it arrives on the recovery queue
    sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event))
    # (a long poll already in flight took the message with the template's timeout: make it visible again now)
    first = cloud.router.wait_for(lambda ds: bool(carrying(ds, "e2e-malformed-0001")))
    receipt = carrying(first, "e2e-malformed-0001")[0].event["Records"][0]["receiptHandle"]
    sqs.change_message_visibility(QueueUrl=queue, ReceiptHandle=receipt, VisibilityTimeout=0)
    dead: list[str] = []
    for _ in range(90):
        dead += [m["Body"] for m in sqs.receive_message(QueueUrl=dlq, WaitTimeSeconds=1).get("Messages", [])]
        if dead:
            break
    # then each try reported it as a batch item failure, with the missing field named in the log, and it is in the DLQ
    assert [json.loads(b)["id"] for b in dead] == ["e2e-malformed-0001"]
    tries = carrying(cloud.router.deliveries, "e2e-malformed-0001")
    max_receive = json.loads(
        sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
    )["maxReceiveCount"]
    assert len(tries) == int(max_receive)
    assert all(len(t.result.result["batchItemFailures"]) == 1 for t in tries)
    assert "instance-id" in tries[0].result.logs


def test_schedules_fire_heartbeat_sweep_and_fleet_scaler_on_the_clock(cloud: LocalCloud, clock: ManualClock) -> None:
    # given the template's rate(1 minute) schedules
    def scheduled(ds: list[Delivery]) -> set[str]:
        return {d.function for d in ds if d.source_type == "Schedule" and d.result.ok}

    # when a minute passes on the clock
    clock.advance(60)
    # then both scheduled functions run with a Scheduled Event
    cloud.router.wait_for(lambda ds: {"HeartbeatSweepFunction", "FleetScalerFunction"} <= scheduled(ds))


def ringfleet(*args: str, state_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RINGFLEET_STATE_DIR": str(state_dir)}
    return subprocess.run(
        [sys.executable, "-m", "ringfleet_cli.main", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_invoke_runs_a_handler_like_sam_local_invoke(tmp_path: Path) -> None:
    # given no local cloud running
    # when a user invokes node_recovery with the sample SQS event
    out = ringfleet(
        "invoke", "NodeRecoveryFunction", "--event", "events/sqs_spot_interruption_warning.json", state_dir=tmp_path
    )
    # then the handler's result is printed and its logs go to stderr
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"batchItemFailures": []}
    assert "instance belongs to no job" in out.stderr  # the sample names an instance no job owns
    assert "REPORT RequestId" in out.stderr


@pytest.mark.parametrize("function", ["HeartbeatSweepFunction", "FleetScalerFunction"])
def test_schedule_handlers_take_what_sam_local_generate_event_prints(tmp_path: Path, function: str) -> None:
    # given `sam local generate-event cloudwatch scheduled-event`'s output (no top-level version)
    # when a user invokes a schedule handler with it, as with `sam local invoke`
    out = ringfleet("invoke", function, "--event", "events/scheduled_event_sam_local.json", state_dir=tmp_path)
    # then the handler runs the tick
    assert out.returncode == 0, out.stdout + out.stderr


def test_invoke_names_the_functions_when_the_logical_id_is_wrong(tmp_path: Path) -> None:
    out = ringfleet("invoke", "NoSuchFunction", "--event", "events/scheduled_event.json", state_dir=tmp_path)
    assert out.returncode != 0
    assert "NodeRecoveryFunction" in out.stderr


def test_local_up_emit_status_down(tmp_path: Path, broker_url: str) -> None:
    # given a local cloud started in the background
    up = ringfleet("local", "up", state_dir=tmp_path)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        # when a rebalance recommendation is emitted for a chosen instance
        emitted = ringfleet(
            "local",
            "emit",
            "events/ec2_rebalance_recommendation.json",
            "--set",
            "detail.instance-id=i-0abcdef0123456789",
            state_dir=tmp_path,
        )
        assert emitted.returncode == 0, emitted.stderr
        assert "put_events" in emitted.stdout
        # then status shows node_recovery handled it
        for _ in range(60):
            status = ringfleet("local", "status", state_dir=tmp_path)
            if "NodeRecoveryFunction <- " in status.stdout:
                break
        assert "NodeRecoveryFunction <- " in status.stdout and " ok" in status.stdout
        # and its JSON form parses, with the same deliveries
        as_json = json.loads(ringfleet("local", "status", "--output", "json", state_dir=tmp_path).stdout)
        assert any(d["function"] == "NodeRecoveryFunction" for d in as_json["last_deliveries"])
    finally:
        down = ringfleet("local", "down", state_dir=tmp_path)
    assert down.returncode == 0 and "down" in down.stdout
    assert "no local cloud" in ringfleet("local", "status", state_dir=tmp_path).stderr
