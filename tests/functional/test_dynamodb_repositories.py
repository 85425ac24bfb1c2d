"""The DynamoDB repositories on template.yaml's tables: put-if-absent, the generation fence, newest-step-wins."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import boto3
import pytest
from ringfleet_local.cloud import LocalCloud

from ringfleet.adapters.dynamodb import DynamoDbJobRepository, DynamoDbNodeRepository
from ringfleet.core.jobs import DurableCheckpoint, Incident, JobState, PendingRecovery
from ringfleet.core.nodes import LifecycleHook, NodeState
from tests.builders import T0, instance, later, running_job

pytestmark = pytest.mark.functional


class Clock:
    def now(self) -> Any:
        return later(5)


@pytest.fixture
def jobs(aws: LocalCloud) -> DynamoDbJobRepository:
    table = aws.ctx.resolve({"Ref": "JobsTable"})
    return DynamoDbJobRepository(str(table), clock=Clock(), boto3_resource=boto3.resource("dynamodb"))


@pytest.fixture
def nodes(aws: LocalCloud) -> DynamoDbNodeRepository:
    table = aws.ctx.resolve({"Ref": "NodesTable"})
    return DynamoDbNodeRepository(str(table), clock=Clock(), boto3_resource=boto3.resource("dynamodb"))


def test_create_is_put_if_absent_and_a_job_reads_back_as_written(jobs: DynamoDbJobRepository) -> None:
    # given a job with every field set
    job, _ = running_job("repo-roundtrip")
    job = replace(
        job,
        spares=(instance(40),),
        replacements_wanted=2,
        recovery=PendingRecovery(cause="spot-interruption", started_at=T0, leaving=(instance(2),), lost=(instance(3),)),
        incidents=(Incident(at=T0, cause="spot-interruption", generation=1, instance_id=instance(2)),),
        outbox=({"type": "Stop"},),
        script_failures=2,
        script_failed_generation=1,
        failure="entrypoint exited with status 1\nTraceback (most recent call last):\nValueError: boom",
    )
    # when it is created twice
    assert jobs.create(job) is True
    assert jobs.create(replace(job, tenant="someone-else")) is False
    # then the first one is stored, field for field
    stored = jobs.get("repo-roundtrip")
    assert stored == replace(job, revision=1, created_at=T0, updated_at=later(5))


def test_a_save_decided_from_a_stale_read_is_refused(jobs: DynamoDbJobRepository) -> None:
    job, _ = running_job("repo-fence")
    jobs.create(job)
    read = jobs.get("repo-fence")
    assert read is not None
    # when two deciders save from the same read
    first = bool(jobs.save(replace(read, state=JobState.RECOVERING), decided_from=read))
    second = bool(jobs.save(read.reconfigured({instance(1): 0}), decided_from=read))
    # then only the first is stored
    assert (first, second) == (True, False)
    stored = jobs.get("repo-fence")
    assert stored is not None and stored.state is JobState.RECOVERING and stored.generation == 1
    assert stored.revision == read.revision + 1


def test_saves_write_what_changed_and_the_job_reads_back_as_each_decision(jobs: DynamoDbJobRepository) -> None:
    job, _ = running_job("repo-changes")
    jobs.create(job)
    read = jobs.get("repo-changes")
    assert read is not None
    # when one decision changes a few attributes, and the next one others, each from the job the last one stored
    first = replace(
        read,
        state=JobState.RECOVERING,
        recovery=PendingRecovery(cause="spot-interruption", started_at=T0, leaving=(instance(2),)),
        outbox=({"type": "CheckpointNow", "message_id": "m1"},),
    )
    assert jobs.save(first, decided_from=read)
    after_first = jobs.get("repo-changes")
    assert after_first is not None
    second = replace(after_first, outbox=(), spares=(instance(40),), replacements_wanted=0)
    assert jobs.save(second, decided_from=after_first)
    # then the job reads back as the last decision, field for field
    assert after_first == replace(first, revision=read.revision + 1, updated_at=later(5))
    assert jobs.get("repo-changes") == replace(second, revision=read.revision + 2, updated_at=later(5))


def test_a_counted_script_failure_is_saved_under_the_fence_and_a_job_stored_before_it_reads_as_never_failed(
    jobs: DynamoDbJobRepository,
) -> None:
    # given a job stored before jobs counted script failures (an item without those attributes)
    job, _ = running_job("repo-script")
    jobs.create(job)
    jobs._table.update_item(
        Key={"job_id": "repo-script"}, UpdateExpression="REMOVE script_failures, script_failed_generation, failure"
    )
    read = jobs.get("repo-script")
    assert read is not None
    assert (read.script_failures, read.script_failed_generation, read.failure) == (0, None, None)
    # when one decider counts a failure and fails the job, and another decided from the same read
    failed = replace(
        read, state=JobState.FAILED, script_failures=1, script_failed_generation=1, failure="ValueError: boom"
    )
    assert jobs.save(failed, decided_from=read)
    assert not jobs.save(replace(read, script_failures=1, script_failed_generation=1), decided_from=read)
    # then the job reads back FAILED with its count and reason
    stored = jobs.get("repo-script")
    assert stored is not None and stored.state is JobState.FAILED
    assert (stored.script_failures, stored.script_failed_generation, stored.failure) == (1, 1, "ValueError: boom")


def test_of_many_deciders_saving_from_the_same_read_at_once_exactly_one_wins(aws: LocalCloud) -> None:
    # given a job, and eight deciders (threads, each with its own client) that all read it
    table = str(aws.ctx.resolve({"Ref": "JobsTable"}))
    deciders = [
        DynamoDbJobRepository(table, clock=Clock(), boto3_resource=boto3.Session().resource("dynamodb"))
        for _ in range(8)
    ]
    job, _ = running_job("repo-race")
    deciders[0].create(job)
    for round_ in range(20):
        read = deciders[0].get("repo-race")
        assert read is not None
        start = threading.Barrier(len(deciders))

        def decide(repo: DynamoDbJobRepository, n: int, read: Any = read, start: Any = start) -> bool:
            start.wait()
            return bool(repo.save(replace(read, replacements_wanted=n), decided_from=read))

        # when they all save their own decision at once
        with ThreadPoolExecutor(len(deciders)) as pool:
            won = list(pool.map(decide, deciders, range(len(deciders))))
        # then exactly one goes through, and what is stored is its decision (as DynamoDB's atomic writes give)
        assert won.count(True) == 1, f"round {round_}: {won}"
        stored = deciders[0].get("repo-race")
        assert stored is not None and stored.revision == read.revision + 1
        assert stored.replacements_wanted == won.index(True)


def test_only_a_newer_durable_checkpoint_wins_and_saves_never_overwrite_it(jobs: DynamoDbJobRepository) -> None:
    job, _ = running_job("repo-durable")
    jobs.create(job)
    read = jobs.get("repo-durable")
    assert read is not None

    def checkpoint(step: int) -> DurableCheckpoint:
        return DurableCheckpoint(f"s3://backups-b/jobs/repo-durable/ckpt/{step:012d}/", step, 1)

    assert jobs.record_durable_checkpoint("repo-durable", checkpoint(120)) is True
    assert jobs.record_durable_checkpoint("repo-durable", checkpoint(80)) is False  # older, arriving late
    assert jobs.record_durable_checkpoint("no-such-job", checkpoint(80)) is False
    # a state change decided from a read taken before the checkpoint landed keeps the checkpoint
    assert jobs.save(replace(read, state=JobState.RECOVERING), decided_from=read)
    stored = jobs.get("repo-durable")
    assert stored is not None and stored.durable_checkpoint == checkpoint(120)


def test_list_by_tenant_and_list_active(jobs: DynamoDbJobRepository) -> None:
    live, _ = running_job("repo-live")
    done = replace(running_job("repo-done")[0], state=JobState.SUCCEEDED)
    other = replace(running_job("repo-other")[0], tenant="globex")
    for job in (live, done, other):
        jobs.create(job)
    assert {"repo-live", "repo-done"} <= {j.job_id for j in jobs.list_by_tenant("acme")}
    assert "repo-other" not in {j.job_id for j in jobs.list_by_tenant("acme")}
    active = {j.job_id for j in jobs.list_active()}
    assert "repo-live" in active and "repo-done" not in active


def test_heartbeats_keep_nodes_alive_but_never_revive_a_lost_one(nodes: DynamoDbNodeRepository) -> None:
    _, job_nodes = running_job("repo-nodes", members=2, first=200)
    hook = LifecycleHook("asg", "hook", "token", job_nodes[0].instance_id)
    nodes.put(replace(job_nodes[0], lifecycle_hook=hook))
    nodes.put(replace(job_nodes[1], state=NodeState.LOST))
    alive, lost = job_nodes[0].instance_id, job_nodes[1].instance_id
    assert nodes.get(alive) == replace(job_nodes[0], lifecycle_hook=hook)
    # a heartbeat of the current generation is recorded; one of an older generation or for a lost node is not
    job = "repo-nodes"
    assert nodes.record_heartbeat(alive, job_id=job, generation=1, step=150, at=later(30)) is True
    assert nodes.record_heartbeat(alive, job_id=job, generation=0, step=151, at=later(31)) is False
    assert nodes.record_heartbeat(lost, job_id=job, generation=1, step=150, at=later(30)) is False
    assert nodes.record_heartbeat(instance(0xDEAD), job_id=job, generation=1, step=1, at=later(30)) is False
    # a heartbeat naming another job (a worker of that job speaking for this node) is not recorded either
    assert nodes.record_heartbeat(alive, job_id="repo-other", generation=1, step=152, at=later(32)) is False
    assert nodes.get(alive).last_step == 150
    # and only the node silent since before the cut-off is listed as silent
    silent = {n.instance_id for n in nodes.list_silent(later(20))}
    assert alive not in silent and lost not in silent
    assert alive in {n.instance_id for n in nodes.list_silent(later(40))}
    assert [n.instance_id for n in nodes.list_by_job("repo-nodes")] == sorted([alive, lost])


def test_a_nodes_slots_and_tenant_read_back_as_placed_and_a_row_written_before_them_reads_as_one_slot_no_tenant(
    nodes: DynamoDbNodeRepository,
) -> None:
    # given a four-GPU member of tenant acme as the scaler placed it, and one whose row was written before slots and
    # tenants were recorded
    _, (four, old) = running_job("repo-slots", members=2, first=400)
    nodes.put(replace(four, slots=4, tenant="acme"))
    nodes.put(old)
    row = nodes._table.get_item(Key={"instance_id": old.instance_id})["Item"]
    del row["slots"], row["tenant"]
    nodes._table.put_item(Item=row)
    # then the first reads back with its 4 slots and its tenant, by id and by job; the old row with the one process
    # it ran and no tenant
    assert nodes.get(four.instance_id) == replace(four, slots=4, tenant="acme")
    by_job = {n.instance_id: (n.slots, n.tenant) for n in nodes.list_by_job("repo-slots")}
    assert by_job == {four.instance_id: (4, "acme"), old.instance_id: (1, None)}
    # and a heartbeat keeps what it found
    assert nodes.record_heartbeat(four.instance_id, job_id="repo-slots", generation=1, step=3, at=later(10)) is True
    stored = nodes.get(four.instance_id)
    assert stored is not None and (stored.slots, stored.tenant) == (4, "acme")


def test_the_first_heartbeat_of_a_node_never_heard_from_is_recorded(nodes: DynamoDbNodeRepository) -> None:
    # given a member as a placement or a recovery writes it: active, never heard from (stored as NULL, not absent)
    _, (member,) = running_job("repo-first-beat", members=1, first=300)
    fresh = replace(member, last_heartbeat=None, last_step=None, updated_at=later(0))
    nodes.put(fresh)
    # when its worker's first heartbeats arrive, then they are recorded, in order only
    job = "repo-first-beat"
    assert nodes.record_heartbeat(member.instance_id, job_id=job, generation=1, step=5, at=later(10)) is True
    assert nodes.record_heartbeat(member.instance_id, job_id=job, generation=1, step=9, at=later(15)) is True
    assert nodes.record_heartbeat(member.instance_id, job_id=job, generation=1, step=7, at=later(12)) is False
    stored = nodes.get(member.instance_id)
    assert stored is not None and stored.last_step == 9 and stored.last_heartbeat == later(15)
    # and the sweep does not find it silent from its placement on
    assert member.instance_id not in {n.instance_id for n in nodes.list_silent(later(14))}
