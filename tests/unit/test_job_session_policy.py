"""job_session_policy narrows WorkerJobRole to one job, and the worker's instance role writes no checkpoint.

What a worker may do is what both WorkerJobRole's own policy (template.yaml, resolved as the local cloud resolves it)
and the session policy allow; each is evaluated by moto's IAM policy engine (moto's server does not enforce IAM, so
this is where the policies meet requests).
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest
from moto.iam.access_control import IAMPolicy, PermissionResult
from ringfleet_local.context import CloudContext
from ringfleet_local.template import load_template

from tests.conftest import ROOT
from training_worker.checkpoint import job_session_policy

pytestmark = pytest.mark.unit

TEMPLATE = load_template(ROOT / "template.yaml")
LOCAL = CloudContext(TEMPLATE, endpoint="http://127.0.0.1:1")
CHECKPOINTS = str(LOCAL.resolve({"Ref": "CheckpointBucket"}))
BACKUPS = str(LOCAL.resolve({"Ref": "BackupBucket"}))
JOB, OTHER = "digits-demo", "digits-demo-2"


def role_policies(logical_id: str) -> list[IAMPolicy]:
    props = LOCAL.resolve(TEMPLATE.resources[logical_id]["Properties"], logical_id)
    return [IAMPolicy(json.dumps(p["PolicyDocument"])) for p in props.get("Policies", [])]


def allows(policies: list[IAMPolicy], action: str, resource: str, conditions: dict[str, Any] | None = None) -> bool:
    results = [p.is_action_permitted(action, resource, incoming_condition_values=conditions) for p in policies]
    return PermissionResult.PERMITTED in results and PermissionResult.DENIED not in results


def worker_may(action: str, resource: str, conditions: dict[str, Any] | None = None) -> bool:
    """As WorkerJobRole assumed with job ``JOB``'s session policy: both must allow it."""
    session = [IAMPolicy(json.dumps(job_session_policy(CHECKPOINTS, JOB)))]
    return allows(role_policies("WorkerJobRole"), action, resource, conditions) and allows(
        session, action, resource, conditions
    )


def obj(bucket: str, job: str) -> str:
    return f"arn:aws:s3:::{bucket}/jobs/{job}/ckpt/000000000100/model.pt.zst"


@pytest.mark.parametrize("action", ["s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload"])
def test_a_worker_writes_reads_and_deletes_its_own_jobs_checkpoints(action: str) -> None:
    assert worker_may(action, obj(CHECKPOINTS, JOB))


@pytest.mark.parametrize("action", ["s3:PutObject", "s3:GetObject", "s3:DeleteObject"])
def test_a_worker_touches_nothing_under_another_jobs_prefix_though_the_role_would(action: str) -> None:
    # WorkerJobRole alone allows every job's prefix: the session policy is what narrows it
    assert allows(role_policies("WorkerJobRole"), action, obj(CHECKPOINTS, OTHER))
    assert not worker_may(action, obj(CHECKPOINTS, OTHER))
    # a job whose id starts like this one's is another job too
    assert not worker_may(action, f"arn:aws:s3:::{CHECKPOINTS}/jobs/{JOB}x/ckpt/000000000100/manifest.json")


def test_a_worker_restores_its_job_from_the_backup_bucket_and_never_writes_there() -> None:
    assert worker_may("s3:GetObject", obj(BACKUPS, JOB))
    assert not worker_may("s3:GetObject", obj(BACKUPS, OTHER))
    assert not worker_may("s3:PutObject", obj(BACKUPS, JOB))
    assert not worker_may("s3:DeleteObject", obj(BACKUPS, JOB))


def lists(prefix: str) -> bool:
    """Whether the session policy lets the worker list ``prefix`` of the checkpoint bucket. moto's policy engine
    skips StringLike conditions, so the condition is matched here: StringLike's ``*`` and ``?`` are fnmatch's."""
    bucket = f"arn:aws:s3:::{CHECKPOINTS}"
    session = IAMPolicy(json.dumps(job_session_policy(CHECKPOINTS, JOB)))
    assert allows(role_policies("WorkerJobRole"), "s3:ListBucket", bucket)
    listing = [s for s in job_session_policy(CHECKPOINTS, JOB)["Statement"] if s["Action"] == "s3:ListBucket"]
    return allows([session], "s3:ListBucket", bucket) and all(
        fnmatch.fnmatchcase(prefix, s["Condition"]["StringLike"]["s3:prefix"]) for s in listing
    )


def test_a_worker_lists_only_its_own_jobs_prefix() -> None:
    assert lists(f"jobs/{JOB}/ckpt/")
    assert not lists(f"jobs/{OTHER}/ckpt/")
    assert not lists("jobs/")


@pytest.mark.parametrize("action", ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"])
def test_the_instance_role_itself_writes_no_checkpoint(action: str) -> None:
    for bucket in (CHECKPOINTS, BACKUPS):
        assert not allows(role_policies("WorkerRole"), action, obj(bucket, JOB))
    # it may take the job's role (the trust and its own side of it)
    trust = LOCAL.resolve(TEMPLATE.resources["WorkerJobRole"]["Properties"]["AssumeRolePolicyDocument"])
    assert trust["Statement"][0]["Principal"] == {"AWS": LOCAL.resolve({"Fn::GetAtt": ["WorkerRole", "Arn"]})}


@pytest.mark.parametrize(
    ("bucket", "job_id", "complaint"),
    [
        (CHECKPOINTS, "*", "job_id '\\*' does not match"),
        (CHECKPOINTS, "a/../b", "job_id 'a/../b' does not match"),
        (CHECKPOINTS, "", "job_id '' does not match"),
        ("*", JOB, "bucket '\\*' is not an S3 bucket name"),
    ],
)
def test_a_job_id_or_bucket_that_would_widen_the_policy_is_refused(bucket: str, job_id: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        job_session_policy(bucket, job_id)


def test_the_policy_names_the_partition_of_the_role() -> None:
    policy = job_session_policy(CHECKPOINTS, JOB, partition="aws-cn")
    assert all(s["Resource"].startswith("arn:aws-cn:s3:::") for s in policy["Statement"])
