"""refused_writer: a manifest counts only when its writer is a node of the job, a member at the manifest's
generation, in the job's current or previous generation; any other writer is refused, saying why."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ringfleet.backup.writers import refused_writer
from ringfleet.contracts import CheckpointManifest, ShardEntry
from ringfleet.core.nodes import Node, NodeState
from tests.builders import T0, instance, running_job

pytestmark = pytest.mark.unit

JOB, NODES = running_job("digits-demo", members=2, generation=5)
WRITER = NODES[0].instance_id
SHARD = ShardEntry(name="model.pt.zst", size=3, sha256="0" * 64)


def manifest(*, writer: str | None = WRITER, generation: int = 5, job_id: str = "digits-demo") -> CheckpointManifest:
    return CheckpointManifest(
        job_id=job_id, step=100, generation=generation, world_size=2, created_at=T0, instance_id=writer, shards=[SHARD]
    )


def node(generation: int, state: NodeState = NodeState.LOST) -> list[Node]:
    return [replace(NODES[0], state=state, rank=None, generation=generation), NODES[1]]


def test_a_member_of_the_current_generation_writes_its_jobs_checkpoints() -> None:
    assert refused_writer(manifest(), JOB, NODES) is None


def test_a_member_of_the_current_generation_writing_one_of_an_earlier_generation_counts() -> None:
    # a slow upload begun before the last reconfiguration, by a worker that stayed in the ring
    assert refused_writer(manifest(generation=4), JOB, NODES) is None


def test_a_writer_that_left_with_the_last_reconfiguration_counts() -> None:
    # the spot instance whose emergency checkpoint that was, LOST since the job moved to generation 5
    assert refused_writer(manifest(generation=4), JOB, node(4)) is None


@pytest.mark.parametrize(
    ("checkpoint", "nodes", "reason"),
    [
        (manifest(generation=3), node(3), f"{WRITER}, last a member of job digits-demo at generation 3: not the job's"),
        (manifest(generation=5), node(4), f"{WRITER}, last a member of job digits-demo at generation 4, not at the"),
        (manifest(generation=6), NODES, "manifest claims generation 6, but job digits-demo is at 5"),
        (manifest(writer=instance(0xFFF)), NODES, f"{instance(0xFFF)}, which is not a node of job digits-demo"),
        (manifest(writer=None), NODES, "names no writer (instance_id)"),
        # a spare placed on the job, never in its ring (generation 0)
        (manifest(generation=0), node(0, NodeState.PLACED), "last a member of job digits-demo at generation 0"),
        # the writer's row now belongs to another job (the instance was placed elsewhere)
        (manifest(), [replace(NODES[0], job_id="other-job"), NODES[1]], "which is not a node of job digits-demo"),
    ],
)
def test_any_other_writer_is_refused_saying_why(checkpoint: CheckpointManifest, nodes: list[Node], reason: str) -> None:
    refused = refused_writer(checkpoint, JOB, nodes)
    assert refused is not None and reason in refused


def test_a_manifest_of_a_job_that_does_not_exist_is_refused() -> None:
    assert refused_writer(manifest(job_id="ghost"), None, []) == "job ghost does not exist"
