"""Recovery and backup end to end: sample events through EventBridge, SQS, RabbitMQ and S3, the router and handlers.

Each test seeds its own job (RUNNING, generation 1, nodes in the nodes table), sends what AWS or a worker would
send, and checks what a user would notice: the job's state and generation, and the commands its workers receive.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest
from ringfleet_local.clock import ManualClock
from ringfleet_local.cloud import LocalCloud
from ringfleet_local.emit import emit

from ringfleet.backup.ports import CheckpointStatus
from ringfleet.contracts import WORKER_EVENTS_QUEUE, CheckpointManifest, ShardEntry, encode_manifest
from ringfleet.contracts.broker import JOBS_QUEUE, dead_letter_queue
from ringfleet.contracts.checkpoints import full_object_checksum
from ringfleet.core.jobs import DurableCheckpoint, JobState
from ringfleet.core.nodes import Node, NodeState
from tests.builders import T0, instance
from tests.conftest import ROOT, purge_queue
from tests.e2e.recovery_support import CommandTap, Tables, carrying, handled, publish_raw

pytestmark = pytest.mark.e2e

RECOVERY_FUNCTIONS = {
    "NodeRecoveryFunction",
    "WorkerEventsFunction",
    "HeartbeatSweepFunction",
    "CheckpointBackupFunction",
}


def sample(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "events" / name).read_text())


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(T0)


@pytest.fixture(scope="module")
def cloud(broker_url: str, clock: ManualClock) -> Iterator[LocalCloud]:
    for queue in (JOBS_QUEUE, WORKER_EVENTS_QUEUE, dead_letter_queue(WORKER_EVENTS_QUEUE)):
        purge_queue(broker_url, queue)
    with LocalCloud(ROOT / "template.yaml", broker_url=broker_url, clock=clock, only_functions=RECOVERY_FUNCTIONS) as c:
        yield c


@pytest.fixture(scope="module")
def tables(cloud: LocalCloud) -> Tables:
    return Tables.of(cloud)


def node_event(name: str, instance_id: str) -> dict[str, Any]:
    event = sample(name)
    event["id"] = str(uuid4())
    key = "EC2InstanceId" if "EC2InstanceId" in event["detail"] else "instance-id"
    event["detail"][key] = instance_id
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
    return event


def worker_message(name: str, job_id: str, instance_id: str, **fields: Any) -> dict[str, Any]:
    message = sample(f"messages/{name}")
    message.update(job_id=job_id, instance_id=instance_id, message_id=str(uuid4()), **fields)
    if "uri" in message:
        message["uri"] = f"s3://ringfleet-checkpoints/jobs/{job_id}/ckpt/{message['step']:012d}/"
    return message


def test_spot_warning_checkpoint_and_termination_end_in_one_reconfigure(cloud: LocalCloud, tables: Tables) -> None:
    # given a RUNNING job of four and a tap on its commands
    job, nodes = tables.seed("e2e-spot", first=0x100)
    tap = CommandTap(cloud.ctx.broker_url, job.job_id)
    leaving = nodes[2].instance_id
    # when EC2 warns that one member will be interrupted
    warning = node_event("ec2_spot_interruption_warning.json", leaving)
    emit(cloud.ctx, warning)
    handled(cloud, leaving)
    # then its workers are told to checkpoint now, at generation 1, and the job is RECOVERING
    tap.wait_for(lambda cs: any(c["type"] == "CheckpointNow" for c in cs))
    assert tap.of_type("CheckpointNow")[0]["generation"] == 1
    assert tables.job(job.job_id).state is JobState.RECOVERING
    assert tables.nodes.get(leaving).state is NodeState.LEAVING  # type: ignore[union-attr]
    # when rank 0 reports the emergency checkpoint and then the instance terminates
    done = worker_message("checkpoint_completed.json", job.job_id, nodes[0].instance_id, generation=1, step=120)
    emit(cloud.ctx, done)
    handled(cloud, done["message_id"])
    assert tables.job(job.job_id).generation == 1, "no replacement yet: the ring waits"
    terminated = node_event("ec2_instance_state_change.json", leaving)
    emit(cloud.ctx, terminated)
    handled(cloud, leaving, 2)
    # then the survivors get one Reconfigure at generation 2 without the lost node, and the job runs again
    tap.wait_for(lambda cs: any(c["type"] == "Reconfigure" for c in cs))
    (reconfigure,) = tap.of_type("Reconfigure")
    assert reconfigure["generation"] == 2 and leaving not in reconfigure["ranks"] and len(reconfigure["ranks"]) == 3
    final = tables.job(job.job_id)
    assert (final.state, final.generation, dict(final.members)) == (JobState.RUNNING, 2, reconfigure["ranks"])
    assert tables.nodes.get(leaving).state is NodeState.LOST  # type: ignore[union-attr]


def test_rebalance_recommendation_without_spare_capacity_prepares_a_checkpoint(
    cloud: LocalCloud, tables: Tables
) -> None:
    job, nodes = tables.seed("e2e-rebalance", first=0x200)
    tap = CommandTap(cloud.ctx.broker_url, job.job_id)
    event = node_event("ec2_rebalance_recommendation.json", nodes[1].instance_id)
    emit(cloud.ctx, event)
    handled(cloud, nodes[1].instance_id)
    (command,) = tap.wait_for(lambda cs: bool(cs))
    assert (command["type"], command["reason"], command["generation"]) == ("CheckpointNow", "rebalance", 1)
    assert tables.job(job.job_id).replacements_wanted == 1


def test_lifecycle_terminate_action_holds_the_instance_while_the_checkpoint_runs(
    cloud: LocalCloud, tables: Tables
) -> None:
    job, nodes = tables.seed("e2e-lifecycle", first=0x300)
    tap = CommandTap(cloud.ctx.broker_url, job.job_id)
    event = node_event("autoscaling_lifecycle_terminate.json", nodes[3].instance_id)
    emit(cloud.ctx, event)
    (delivery,) = handled(cloud, nodes[3].instance_id)
    tap.wait_for(lambda cs: any(c["reason"] == "lifecycle-terminate" for c in cs))
    node = tables.nodes.get(nodes[3].instance_id)
    assert node is not None and node.state is NodeState.LEAVING and node.lifecycle_hook is not None
    assert node.lifecycle_hook.token == event["detail"]["LifecycleActionToken"]
    # moto has no lifecycle actions: the heartbeat call fails and is logged, the decision stands
    assert "record_lifecycle_action_heartbeat" in delivery.result.logs


def test_heartbeat_records_liveness_and_a_worker_failure_reforms_the_ring(cloud: LocalCloud, tables: Tables) -> None:
    job, nodes = tables.seed("e2e-worker", first=0x400)
    tap = CommandTap(cloud.ctx.broker_url, job.job_id)
    beat = worker_message(
        "heartbeat.json", job.job_id, nodes[1].instance_id, generation=1, rank=1, world_size=4, step=321
    )
    beat["sent_at"] = "2027-01-01T00:00:00Z"
    emit(cloud.ctx, beat)
    handled(cloud, beat["message_id"])
    node = tables.nodes.get(nodes[1].instance_id)
    assert node is not None and node.last_step == 321 and node.last_heartbeat is not None
    # a heartbeat dated in the future counts as heard when it arrived: no clock can make a node undying
    assert node.last_heartbeat <= datetime.now(UTC)
    failed = worker_message("worker_failed.json", job.job_id, nodes[2].instance_id, generation=1, rank=2)
    emit(cloud.ctx, failed)
    handled(cloud, failed["message_id"])
    (reconfigure,) = tap.wait_for(lambda cs: bool(cs))
    assert reconfigure["generation"] == 2 and nodes[2].instance_id not in reconfigure["ranks"]


def test_replay_three_times_shuffled_gives_one_reconfigure_and_the_in_order_state(
    cloud: LocalCloud, tables: Tables
) -> None:
    # given a job and the three events of one incident: warning, emergency checkpoint, termination
    job, nodes = tables.seed("e2e-replay", first=0x500)
    tap = CommandTap(cloud.ctx.broker_url, job.job_id)
    leaving = nodes[1].instance_id
    warning = node_event("ec2_spot_interruption_warning.json", leaving)
    terminated = node_event("ec2_instance_state_change.json", leaving)
    completed = worker_message("checkpoint_completed.json", job.job_id, nodes[0].instance_id, generation=1, step=90)
    # when each arrives three times, the termination first and the checkpoint after the restart (same ids, as an
    # at-least-once delivery repeats them)
    sqs, queue = cloud.client("sqs"), cloud.ctx.resolve({"Ref": "RecoveryQueue"})
    order = [terminated, terminated, warning, completed, terminated, warning, completed, warning, completed]
    for event in order:
        if event is completed:
            emit(cloud.ctx, completed)
        else:
            sqs.send_message(QueueUrl=queue, MessageBody=json.dumps(event))
    handled(cloud, terminated["id"], 3)
    handled(cloud, warning["id"], 3)
    handled(cloud, completed["message_id"], 3)
    # then exactly one Reconfigure went out, for generation 2, and the job is as one in-order delivery leaves it
    commands = tap.settle()
    assert [c["generation"] for c in commands if c["type"] == "Reconfigure"] == [2]
    final = tables.job(job.job_id)
    assert final.state is JobState.RUNNING and final.generation == 2
    assert set(final.members) == {n.instance_id for n in nodes} - {leaving}


def test_silent_node_is_found_by_the_heartbeat_sweep(cloud: LocalCloud, tables: Tables, clock: ManualClock) -> None:
    # given a job whose one member was last heard from at T0, the others far later
    job, nodes = tables.seed("e2e-sweep", first=0x600)
    silent = nodes[3].instance_id
    tables.nodes.put(replace(nodes[3], last_heartbeat=T0))
    tap = CommandTap(cloud.ctx.broker_url, job.job_id)
    # when two minutes pass (the sweep runs every minute; 90 s of silence is a lost node)
    clock.advance(120)
    # then the sweep reconfigures the job without it
    (reconfigure,) = tap.wait_for(lambda cs: bool(cs), timeout=30)
    assert reconfigure["generation"] == 2 and silent not in reconfigure["ranks"]
    sweeps = [d for d in cloud.router.deliveries if d.function == "HeartbeatSweepFunction"]
    assert sweeps and all(d.result.ok for d in sweeps)


def put_checkpoint(cloud: LocalCloud, job_id: str, step: int, writer: str, *, corrupt: bool = False) -> str:
    bucket = str(cloud.ctx.resolve({"Ref": "CheckpointBucket"}))
    s3 = cloud.client("s3")
    prefix = f"jobs/{job_id}/ckpt/{step:012d}/"
    shards = []
    for rank in range(2):
        data = f"{job_id}-{step}-{rank}".encode() * 100
        body = data[:-1] + b"!" if corrupt and rank else data
        s3.put_object(Bucket=bucket, Key=prefix + f"rank-{rank}.pt.zst", Body=body, ChecksumAlgorithm="SHA256")
        sha256 = hashlib.sha256(data).hexdigest()
        shards.append(
            ShardEntry(
                name=f"rank-{rank}.pt.zst", size=len(data), sha256=sha256, checksum_sha256=full_object_checksum(sha256)
            )
        )
    manifest = CheckpointManifest(
        job_id=job_id, step=step, generation=1, world_size=2, created_at=T0, instance_id=writer, shards=shards
    )
    s3.put_object(Bucket=bucket, Key=prefix + "manifest.json", Body=encode_manifest(manifest))
    return prefix


def test_a_corrupted_checkpoint_is_quarantined_and_a_restart_loads_the_previous_one(
    cloud: LocalCloud, tables: Tables
) -> None:
    # given a one-worker job with a spare standing by
    job, nodes = tables.seed("e2e-backup", members=1, first=0x700)
    spare = instance(0x7FF)
    tables.nodes.put(Node(instance_id=spare, job_id=job.job_id, state=NodeState.PLACED, host="10.0.7.255"))
    read = tables.job(job.job_id)
    assert tables.jobs.save(replace(read, spares=(spare,)), decided_from=read)
    tap = CommandTap(cloud.ctx.broker_url, job.job_id)
    # when a good checkpoint at step 80 lands, then one at step 120 with a corrupted shard
    put_checkpoint(cloud, job.job_id, 80, nodes[0].instance_id)
    handled(cloud, "000000000080/manifest.json")
    put_checkpoint(cloud, job.job_id, 120, nodes[0].instance_id, corrupt=True)
    (delivery,) = handled(cloud, "000000000120/manifest.json")
    # then step 80 is backed up and durable; step 120 is quarantined, not copied, and counted
    backup = str(cloud.ctx.resolve({"Ref": "BackupBucket"}))
    copied = cloud.client("s3").list_objects_v2(Bucket=backup, Prefix=f"jobs/{job.job_id}/")
    keys = {o["Key"] for o in copied.get("Contents", [])}
    assert f"jobs/{job.job_id}/ckpt/000000000080/manifest.json" in keys
    assert not any("000000000120" in k for k in keys)
    statuses = {r.step: r.status for r in tables.checkpoints.list(job.job_id)}
    assert statuses == {80: CheckpointStatus.DURABLE, 120: CheckpointStatus.QUARANTINED}
    assert tables.job(job.job_id).durable_checkpoint == DurableCheckpoint(
        f"s3://{backup}/jobs/{job.job_id}/ckpt/000000000080/", 80, 1
    )
    assert "CheckpointsQuarantined" in delivery.result.logs and "rank-1.pt.zst" in delivery.result.logs
    # when the only worker is lost
    terminated = node_event("ec2_instance_state_change.json", nodes[0].instance_id)
    emit(cloud.ctx, terminated)
    # then the spare restarts the job from step 80, the newest durable checkpoint
    (reconfigure,) = tap.wait_for(lambda cs: bool(cs))
    assert reconfigure["ranks"] == {spare: 0}
    assert reconfigure["checkpoint"] == {"uri": f"s3://{backup}/jobs/{job.job_id}/ckpt/000000000080/", "step": 80}
    assert reconfigure["rendezvous"].startswith("10.0.7.255:")


def test_malformed_and_unknown_worker_messages_are_dead_lettered_without_state_change(
    cloud: LocalCloud, tables: Tables, broker_url: str
) -> None:
    job, nodes = tables.seed("e2e-malformed", first=0x800)
    before = tables.job(job.job_id)
    absurd = worker_message("checkpoint_completed.json", job.job_id, nodes[0].instance_id, generation=1, step=10)
    absurd["step"] = -5
    unknown = worker_message("checkpoint_completed.json", "no-such-job", nodes[0].instance_id, generation=1, step=10)
    for message in (absurd, unknown):
        publish_raw(broker_url, json.dumps(message).encode(), WORKER_EVENTS_QUEUE)
    # then each is retried up to the delivery limit and dead-lettered, with the reason in the log
    cloud.router.wait_for(
        lambda ds: (
            len([d for d in carrying(ds, unknown["message_id"]) if not d.result.ok]) >= 3
            and len([d for d in carrying(ds, absurd["message_id"]) if not d.result.ok]) >= 3
        ),
        timeout=60,
    )
    logs = " ".join(d.result.logs for d in carrying(cloud.router.deliveries, absurd["message_id"]))
    assert "step" in logs and "no-such-job" in " ".join(
        d.result.logs for d in carrying(cloud.router.deliveries, unknown["message_id"])
    )
    after = tables.job(job.job_id)
    assert (after.generation, after.revision, after.state) == (before.generation, before.revision, before.state)


def test_an_instance_of_no_job_is_logged_and_ignored(cloud: LocalCloud, tables: Tables) -> None:
    event = node_event("ec2_spot_interruption_warning.json", instance(0x9999))
    emit(cloud.ctx, event)
    (delivery,) = handled(cloud, instance(0x9999))
    assert delivery.result.result == {"batchItemFailures": []}
    assert "belongs to no job" in delivery.result.logs
    assert tables.nodes.get(instance(0x9999)) is None
