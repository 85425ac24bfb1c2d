"""Checkpoints nobody can forge, on moto: services/checkpoint_backup (its handler, composed by bootstrap) makes a
checkpoint durable only when its writer is a member of the job.

A worker of job A writing a manifest under job B's prefix — valid shards, B's generation, the largest step there is
— gets it quarantined and logged, and nothing else changes: B's durable checkpoint, B's nodes, B's backups, B's
retention. The agent writes its job's checkpoints with credentials from AssumeRole(WorkerJobRole) narrowed to the
job's prefix by a session policy; moto does not enforce IAM (tests/unit/test_job_session_policy.py evaluates the
policy), so A's worker can still put objects under B's prefix here, which is what the backup is shown to refuse.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import boto3
import pytest
import torch

from ringfleet.adapters.dynamodb import DynamoDbCheckpointCatalog
from ringfleet.backup.ports import CheckpointStatus
from ringfleet.contracts import manifest_key
from ringfleet.core.nodes import NodeState
from tests.builders import running_job
from tests.functional.handlers import Handler, handler_of, in_sqs, sample
from training_worker.agent import Agent, CredentialsEndpoint
from training_worker.checkpoint import S3CheckpointStore, job_session_policy
from training_worker.runtime import RuntimeConfig

pytestmark = [pytest.mark.functional, pytest.mark.timeout(120)]

JOB_A, JOB_B = "forge-a", "forge-b"
#: Job B's generation: its members' checkpoints claim it.
GENERATION_B = 4
HUGE_STEP = 10**12 - 1
_SEQUENCER = itertools.count(1)


@pytest.fixture(scope="module")
def handler(broker_url: str) -> Iterator[Handler]:
    with handler_of("checkpoint_backup", broker_url) as loaded:
        yield loaded


@pytest.fixture
def backup(handler: Handler) -> Handler:
    """Empty tables and buckets; job A (2 members, generation 1) and job B (2 members, generation 4) running."""
    handler.reset()
    s3 = boto3.client("s3")
    for bucket in (handler.ref("CheckpointBucket"), handler.ref("BackupBucket")):
        listed = s3.list_object_versions(Bucket=bucket)
        for version in listed.get("Versions", []) + listed.get("DeleteMarkers", []):
            s3.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
    handler.seed(*running_job(JOB_A, members=2, generation=1, first=0xA00))
    handler.seed(*running_job(JOB_B, members=2, generation=GENERATION_B, first=0xB00))
    return handler


def member(backup: Handler, job_id: str, rank: int = 0) -> str:
    (node,) = [n for n in backup.nodes.list_by_job(job_id) if n.rank == rank]
    return node.instance_id


def save(
    backup: Handler, job_id: str, step: int, writer: str, *, s3: Any = None, generation: int = GENERATION_B
) -> None:
    """A checkpoint of ``job_id`` (valid shards, S3 checksums and all) as the worker ``writer`` saves it."""
    store = S3CheckpointStore(backup.ref("CheckpointBucket"), job_id, s3_client=s3 or boto3.client("s3"), writer=writer)
    store.save(step, generation, 2, {"model": {"w": torch.arange(1000) + step}, "trainer": {"step": step}})


def notify(backup: Handler, job_id: str, step: int) -> dict[str, Any]:
    """Delivers S3's notification of the manifest of ``step`` (this version of it) to the handler."""
    bucket, key = backup.ref("CheckpointBucket"), manifest_key(job_id, step)
    head = boto3.client("s3").head_object(Bucket=bucket, Key=key)
    body = json.loads(sample("s3_object_created_sqs.json")["Records"][0]["body"])
    obj = body["Records"][0]["s3"]["object"]
    obj.update(key=key, size=head["ContentLength"], eTag=head["ETag"].strip('"'), versionId=head["VersionId"])
    obj["sequencer"] = f"00683DB0F66AC3B{next(_SEQUENCER):04d}"
    body["Records"][0]["s3"]["bucket"].update(name=bucket, arn=f"arn:aws:s3:::{bucket}")
    result: dict[str, Any] = backup(in_sqs(body))
    return result


def statuses(backup: Handler, job_id: str) -> dict[int, CheckpointStatus]:
    catalog = DynamoDbCheckpointCatalog(backup.ref("CheckpointsTable"), boto3_resource=boto3.resource("dynamodb"))
    return {r.step: r.status for r in catalog.list(job_id)}


def backed_up_steps(backup: Handler, job_id: str) -> set[int]:
    listed = boto3.client("s3").list_objects_v2(Bucket=backup.ref("BackupBucket"), Prefix=f"jobs/{job_id}/ckpt/")
    return {int(o["Key"].split("/")[3]) for o in listed.get("Contents", []) if o["Key"].endswith("/manifest.json")}


def durable_step(backup: Handler, job_id: str) -> int | None:
    job = backup.jobs.get(job_id)
    assert job is not None
    return job.durable_checkpoint.step if job.durable_checkpoint else None


def test_a_worker_of_job_a_writing_a_manifest_under_bs_prefix_is_quarantined_logged_and_changes_nothing(
    backup: Handler, caplog: pytest.LogCaptureFixture
) -> None:
    # given job B's rank 0 checkpointed step 100, backed up and durable
    save(backup, JOB_B, 100, member(backup, JOB_B))
    assert notify(backup, JOB_B, 100) == {"batchItemFailures": []}
    assert durable_step(backup, JOB_B) == 100
    before = backup.tables()
    caplog.clear()
    # when a worker of job A writes a checkpoint under B's prefix: valid shards, B's generation, the largest step
    forger = member(backup, JOB_A)
    save(backup, JOB_B, HUGE_STEP, forger)
    assert notify(backup, JOB_B, HUGE_STEP) == {"batchItemFailures": []}
    # then it is quarantined, and the refusal is logged with the reason
    (refusal,) = [r for r in caplog.records if r.getMessage() == "checkpoint quarantined"]
    assert refusal.levelname == "ERROR" and refusal.step == HUGE_STEP  # type: ignore[attr-defined]
    assert refusal.reason == f"written by {forger}, which is not a node of job {JOB_B}"  # type: ignore[attr-defined]
    assert statuses(backup, JOB_B) == {100: CheckpointStatus.DURABLE, HUGE_STEP: CheckpointStatus.QUARANTINED}
    # and nothing else changed: B's job and nodes as they were, step 100 still B's durable checkpoint and in the
    # backup bucket, nothing of the forged step copied
    after = backup.tables()
    assert after["JobsTable"] == before["JobsTable"] and after["NodesTable"] == before["NodesTable"]
    assert durable_step(backup, JOB_B) == 100
    assert backed_up_steps(backup, JOB_B) == {100}


def test_retention_never_deletes_the_real_checkpoints_for_a_forged_huge_step(backup: Handler) -> None:
    # given a forged manifest with the largest step under B's prefix, quarantined
    save(backup, JOB_B, HUGE_STEP, member(backup, JOB_A))
    notify(backup, JOB_B, HUGE_STEP)
    # when B's own worker goes on checkpointing (template.yaml keeps the newest 3)
    for step in (100, 200, 300, 400):
        save(backup, JOB_B, step, member(backup, JOB_B))
        assert notify(backup, JOB_B, step) == {"batchItemFailures": []}
    # then each became durable in turn, retention retired only the oldest real one, and the forged step took no
    # place among the kept ones
    assert durable_step(backup, JOB_B) == 400
    assert backed_up_steps(backup, JOB_B) == {200, 300, 400}
    assert statuses(backup, JOB_B) == {
        100: CheckpointStatus.RETIRED,
        200: CheckpointStatus.DURABLE,
        300: CheckpointStatus.DURABLE,
        400: CheckpointStatus.DURABLE,
        HUGE_STEP: CheckpointStatus.QUARANTINED,
    }


def test_a_step_a_forger_wrote_first_still_becomes_durable_when_the_jobs_member_writes_it(backup: Handler) -> None:
    # given A's worker wrote B's step 500 before B got there: quarantined
    save(backup, JOB_B, 500, member(backup, JOB_A))
    notify(backup, JOB_B, 500)
    assert statuses(backup, JOB_B) == {500: CheckpointStatus.QUARANTINED}
    # when B's rank 1 writes its own step 500 over it
    save(backup, JOB_B, 500, member(backup, JOB_B, rank=1))
    assert notify(backup, JOB_B, 500) == {"batchItemFailures": []}
    # then that one is vetted afresh and is B's durable checkpoint
    assert statuses(backup, JOB_B) == {500: CheckpointStatus.DURABLE}
    assert durable_step(backup, JOB_B) == 500 and backed_up_steps(backup, JOB_B) == {500}


def test_a_writer_of_the_previous_generation_counts_one_gone_longer_does_not(backup: Handler) -> None:
    # given B's rank 0 left at the previous generation (its emergency checkpoint), its rank 1 two generations ago
    nodes = backup.nodes
    rank0, rank1 = nodes.get(member(backup, JOB_B)), nodes.get(member(backup, JOB_B, 1))
    assert rank0 is not None and rank1 is not None
    left = replace(rank0, state=NodeState.LOST, rank=None, generation=GENERATION_B - 1)
    gone = replace(rank1, state=NodeState.LOST, rank=None, generation=GENERATION_B - 2)
    nodes.put(left)
    nodes.put(gone)
    # when each wrote a checkpoint at the generation it was last a member of
    save(backup, JOB_B, 60, left.instance_id, generation=GENERATION_B - 1)
    save(backup, JOB_B, 70, gone.instance_id, generation=GENERATION_B - 2)
    notify(backup, JOB_B, 60)
    notify(backup, JOB_B, 70)
    # then the previous generation's is durable, the older one's quarantined
    assert statuses(backup, JOB_B) == {60: CheckpointStatus.DURABLE, 70: CheckpointStatus.QUARANTINED}
    assert durable_step(backup, JOB_B) == 60


def test_a_manifest_claiming_a_generation_the_job_never_had_is_quarantined(backup: Handler) -> None:
    save(backup, JOB_B, 80, member(backup, JOB_B), generation=GENERATION_B + 1)
    notify(backup, JOB_B, 80)
    assert statuses(backup, JOB_B) == {80: CheckpointStatus.QUARANTINED}
    assert durable_step(backup, JOB_B) is None and backed_up_steps(backup, JOB_B) == set()


ROLE = "arn:aws:iam::123456789012:role/ringfleet-WorkerJobRole"


def test_the_agent_writes_with_assumed_job_scoped_credentials_and_its_forgery_under_another_job_is_quarantined(
    backup: Handler,
) -> None:
    # given job A's agent (placed on A, as its first Reconfigure would), with WorkerJobRole's ARN
    assumed: list[dict[str, Any]] = []
    returned: list[dict[str, Any]] = []
    boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    events = boto3.DEFAULT_SESSION.events
    events.register("before-parameter-build.sts.AssumeRole", lambda params, **_: assumed.append(dict(params)))
    events.register("after-call.sts.AssumeRole", lambda parsed, **_: returned.append(parsed["Credentials"]))
    bucket, instance = backup.ref("CheckpointBucket"), member(backup, JOB_A)
    config = RuntimeConfig(job_id=JOB_A, instance_id=instance, bucket=bucket)
    agent = Agent(config, entrypoint=["train.py"], job_role_arn=ROLE)
    # when it takes its job's credentials
    agent.use_job_credentials()
    # then it assumed WorkerJobRole as this instance with the session policy of job A's prefix ...
    (call,) = assumed
    assert (call["RoleArn"], call["RoleSessionName"]) == (ROLE, instance)
    assert json.loads(call["Policy"]) == job_session_policy(bucket, JOB_A)
    # ... and its checkpoint store signs with the credentials AssumeRole returned, not the process's own
    store = agent.runtime.tiers.store
    assert store is not None and store.writer == instance
    signed: list[str] = []
    store.s3.meta.events.register(
        "before-send.s3", lambda request, **_: signed.append(str(request.headers["Authorization"]))
    )
    save(backup, JOB_A, 10, instance, s3=store.s3, generation=1)
    assert signed and all(f"Credential={returned[0]['AccessKeyId']}/" in a for a in signed)
    assert returned[0]["AccessKeyId"] != os.environ["AWS_ACCESS_KEY_ID"]
    # and a child (a container's runtime) gets the same credentials from the agent's endpoint, not the process's
    assert agent.credentials is not None
    endpoint = CredentialsEndpoint(agent.credentials)
    own = {k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    which = "import boto3; print(boto3.Session().get_credentials().get_frozen_credentials().access_key)"
    try:
        child = subprocess.run(
            [sys.executable, "-c", which],
            env={**own, **endpoint.environment},
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        endpoint.close()
    assert child.stdout.strip() == returned[-1]["AccessKeyId"]
    # when that worker of A writes a manifest under B's prefix with those credentials (moto does not enforce IAM)
    save(backup, JOB_B, 900, instance, s3=store.s3)
    notify(backup, JOB_B, 900)
    # then the backup quarantines it: A's instance is not a node of B
    assert statuses(backup, JOB_B) == {900: CheckpointStatus.QUARANTINED}
    assert durable_step(backup, JOB_B) is None
