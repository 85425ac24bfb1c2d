"""Checkpoints, as the runtime takes them: when one is due or asked for, written by rank 0 for everyone through the
job's store (the local-disk tier and S3, ``training_worker.checkpoint``) in the background or at once, reported to
the control plane (``CheckpointCompleted``), and read back (the checkpoint a Reconfigure names, or the job's newest).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ringfleet.contracts.messages import CheckpointCompleted
from training_worker.checkpoint import AsyncCheckpointer, CheckpointCorrupt, S3CheckpointStore, SavedCheckpoint
from training_worker.membership import Membership
from training_worker.runtime.config import RuntimeConfig
from training_worker.runtime.job import Job
from training_worker.runtime.link import ControlLink
from training_worker.runtime.state import TrainingState

__all__ = ["CheckpointTiers"]

log = logging.getLogger("training_worker")


class CheckpointTiers:
    """The job's checkpoints: none without a bucket (standalone runs keep their state in memory only)."""

    def __init__(self, config: RuntimeConfig, job: Job, link: ControlLink) -> None:
        self._config = config
        self._job = job
        self._link = link
        self.store: S3CheckpointStore | None = None
        self.checkpointer: AsyncCheckpointer | None = None
        #: The step of the last checkpoint taken (or of the state every rank synced to): the interval counts from it.
        self.last_checkpoint_step = 0
        #: Steps between two checkpoints; the job's program may set its own (``checkpoint_every``).
        self.interval_steps = config.checkpoint_interval_steps

    def serve(self, job_id: str) -> None:
        """Checkpoints are ``job_id``'s from now on."""
        config = self._config
        if config.bucket:
            self.store = S3CheckpointStore(
                config.bucket, job_id, cache_dir=config.checkpoint_cache, writer=config.instance_id
            )
            self.checkpointer = AsyncCheckpointer(self.store)

    def checkpoint_every(self, steps: int) -> None:
        """The job's program checkpoints every ``steps`` steps."""
        self.interval_steps = steps

    def due(self, step: int) -> bool:
        return step - self.last_checkpoint_step >= self.interval_steps

    def count_interval_from(self, step: int) -> None:
        """Every rank holds the state of ``step`` (synced): the next interval counts from there, not from 0."""
        self.last_checkpoint_step = max(self.last_checkpoint_step, step)

    def checkpoint(
        self,
        state: TrainingState,
        membership: Membership,
        step: int,
        *,
        blocking: bool,
        emergency: bool,
        final: bool = False,
    ) -> None:
        self.last_checkpoint_step = step
        if self.checkpointer is None:
            if emergency and membership.rank == 0:
                log.warning("no checkpoint bucket configured: the emergency checkpoint at step %d is skipped", step)
            return
        if membership.rank != 0:
            return  # the state is replicated: rank 0 writes it for everyone
        generation = membership.generation

        def done(saved: SavedCheckpoint) -> None:
            self._report(saved, generation, emergency=emergency, final=final)

        tree = state.committed()
        if blocking:
            done(self.checkpointer.save(step, generation, membership.world_size, tree))
        else:
            # The commit is already a snapshot of its own, never changed again: uploaded as it is, not copied twice.
            self.checkpointer.save_async(step, generation, membership.world_size, tree, done, copy=False)

    def _report(self, saved: SavedCheckpoint, generation: int, *, emergency: bool, final: bool) -> None:
        if not self._link.connected:
            return  # no control plane to tell (standalone runs)
        self._link.publish(
            CheckpointCompleted(
                job_id=self._job.require(),
                instance_id=self._config.instance_id,
                generation=generation,
                step=saved.step,
                uri=saved.uri,
                manifest_sha256=saved.manifest_sha256,
                size_bytes=saved.size_bytes,
                emergency=emergency,
                final=final,
            )
        )

    def finish(self, state: TrainingState, membership: Membership, step: int) -> None:
        """The training function returned: the last step's checkpoint is the job's result, reported as final."""
        if self.checkpointer is None:
            return
        self.checkpointer.wait()
        last = self.checkpointer.last
        if last is not None and last.step == step:
            if membership.rank == 0:
                self._report(last, membership.generation, emergency=False, final=True)
        else:
            self.checkpoint(state, membership, step, blocking=True, emergency=False, final=True)

    def wait(self) -> None:
        """Every checkpoint still being written lands."""
        if self.checkpointer is not None:
            self.checkpointer.wait()

    def restore_named(self, membership: Membership) -> dict[str, Any] | None:
        """The tree of the durable checkpoint a Reconfigure names (the control plane restarts the job from S3)."""
        ref = membership.checkpoint
        if ref is None:
            return None
        store = self.store
        if store is None or store.bucket != ref.bucket or store.job_id != ref.job_id:
            store = S3CheckpointStore(ref.bucket, ref.job_id)
        try:
            manifest, tree = store.load(ref.step)
        except (CheckpointCorrupt, store.s3.exceptions.NoSuchKey) as e:
            log.warning("checkpoint %s named by generation %d does not verify (%s)", ref.uri, membership.generation, e)
            newest = store.load_newest(max_step=ref.step)
            if newest is None:
                raise RuntimeError(f"no checkpoint at or before step {ref.step} verifies") from e
            manifest, tree = newest
        log.info("restored checkpoint step %d for generation %d", manifest.step, membership.generation)
        return tree

    def newest_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint of this job that verifies (a job whose every worker starts fresh resumes there)."""
        if self.store is None:
            return None
        newest = self.store.load_newest()
        if newest is None:
            return None
        manifest, tree = newest
        log.info("resumed from checkpoint step %d (generation %d)", manifest.step, manifest.generation)
        return tree

    def await_checkpoint(self, membership: Membership, step: int, timeout_s: float = 120.0) -> None:
        """A leaving rank other than 0 stays until rank 0's emergency checkpoint is in S3, so that it exits only
        once its work is durable (rank 0 writes for everyone)."""
        if self.store is None or membership.rank == 0:
            return
        deadline = time.monotonic() + timeout_s
        while not self.store.exists(step):
            if time.monotonic() >= deadline:
                log.warning("leaving without seeing the checkpoint of step %d within %.0fs", step, timeout_s)
                return
            time.sleep(0.1)
        log.info("checkpoint step %d saved by rank 0: leaving", step)
