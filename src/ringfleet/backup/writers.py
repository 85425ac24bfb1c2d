"""refused_writer: whether a manifest's writer may make it one of the job's checkpoints (pure).

Anyone able to put an object under ``jobs/<job>/`` could otherwise make any checkpoint the job's newest durable one
(a manifest with a huge step wins "newest step") — a worker of another job, a leftover instance, a stale bug. A
manifest counts only when the instance it names as its writer is a node of the job (the nodes table: an instance
serving another job now is listed under that job, not this one) that was a member at the manifest's generation,
and that generation is the job's current or previous one as the node last knew it: the writer's node generation is
at least the manifest's (it was in the ring then) and at least the job's current one minus one (a writer that left
with the last reconfiguration — say the spot instance whose emergency checkpoint that was — still counts; one gone
for longer does not). A generation newer than the job's own was never handed out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointManifest
    from ringfleet.core.jobs import Job
    from ringfleet.core.nodes import Node

__all__ = ["refused_writer"]


def refused_writer(manifest: CheckpointManifest, job: Job | None, nodes: Iterable[Node]) -> str | None:
    """Why ``manifest`` cannot be ``job``'s checkpoint (``nodes``: the job's, ``NodeRepository.list_by_job``), or
    None when its writer may write it."""
    if job is None:
        return f"job {manifest.job_id} does not exist"
    if manifest.generation > job.generation:
        return f"manifest claims generation {manifest.generation}, but job {job.job_id} is at {job.generation}"
    writer = manifest.instance_id
    if writer is None:
        return "manifest names no writer (instance_id): written by a worker from before writers were named"
    node = next((n for n in nodes if n.instance_id == writer and n.job_id == job.job_id), None)
    if node is None:
        return f"written by {writer}, which is not a node of job {job.job_id}"
    if node.generation < max(manifest.generation, 1):  # generation 0: placed, never in a ring
        return (
            f"written by {writer}, last a member of job {job.job_id} at generation {node.generation}, "
            f"not at the manifest's generation {manifest.generation}"
        )
    if node.generation < job.generation - 1:
        return (
            f"written by {writer}, last a member of job {job.job_id} at generation {node.generation}: not the "
            f"job's current ({job.generation}) or previous generation"
        )
    return None
