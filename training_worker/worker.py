"""The worker: digits classifier trained data-parallel, wired to the control channel, checkpoints and elasticity."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ringfleet.contracts.messages import (
    CheckpointCompleted,
    CheckpointNow,
    Heartbeat,
    Message,
    Reconfigure,
    Stop,
    WorkerFailed,
)
from training_worker.checkpoint import AsyncCheckpointer, CheckpointCorrupt, S3CheckpointStore, SavedCheckpoint
from training_worker.collectives import BACKENDS, select_backend
from training_worker.control import ControlChannel, SpotNoticeWatcher, install_sigterm
from training_worker.data import ShardedDataSource, load_digits
from training_worker.elastic import (
    CommandDiscovery,
    ElasticState,
    FileDiscovery,
    FixedHosts,
    HostDiscovery,
    Membership,
    Outcome,
    run_elastic,
)
from training_worker.optimizer import DistributedOptimizer

__all__ = ["Worker", "WorkerConfig", "build_model"]

log = logging.getLogger("training_worker")

#: How long a worker booted without a job waits to be placed: as long as its instance runs (ten years).
UNPLACED_WAIT_S = 10 * 365 * 86400.0

_WIRE = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class WorkerConfig:
    #: None: boot with the instance and serve the job its first Reconfigure names (needs the control channel).
    job_id: str | None
    instance_id: str
    steps: int = 200
    global_batch: int = 96
    lr: float = 0.05
    seed: int = 0
    commit_every: int = 5
    checkpoint_every: int = 50
    backends: tuple[str, ...] = BACKENDS
    wire: str = "none"
    bucket_bytes: int = 25 << 20
    backward_passes_per_step: int = 1
    timeout_s: float = 10.0
    join_timeout_s: float = 60.0
    wait_s: float = 600.0
    log_every: int = 10
    heartbeat_every_s: float = 5.0
    broker_url: str | None = None
    bucket: str | None = None
    metadata_url: str | None = None
    discovery_file: Path | None = None
    static: Membership | None = None
    final_state: Path | None = None
    step_delay_s: float = 0.0
    flags: dict[str, bool] = field(default_factory=dict)


def build_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


class Worker:
    """Trains until ``steps``, re-forming its ring on every membership change and checkpointing to S3."""

    # Step-boundary flags, OR-ed across ranks every step, so every rank acts on them at the same step.
    RECONFIGURE, STOP, CHECKPOINT, LEAVE = range(4)

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        x, y = load_digits()
        self.data = ShardedDataSource(x, y, config.global_batch, seed=config.seed)
        self.model = build_model(config.seed)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr, momentum=0.9)
        self.state = ElasticState(self.model, self.optimizer, self.data)
        self.store: S3CheckpointStore | None = None
        self.checkpointer: AsyncCheckpointer | None = None
        if config.job_id is not None:
            self._serve(config.job_id)
        self.discovery: HostDiscovery
        self.commands: CommandDiscovery | None = None
        if config.static is not None:
            self.discovery = FixedHosts(config.static)
        elif config.discovery_file is not None:
            self.discovery = FileDiscovery(config.discovery_file, config.instance_id)
        else:
            self.commands = CommandDiscovery(config.instance_id)
            self.discovery = self.commands
        self.channel: ControlChannel | None = None
        self.generation = -1
        self._pending = [False] * 4
        self._leaving = False
        self._beating: Future[None] | None = None
        #: What the next Heartbeat reports (generation, rank, world size, step, loss, samples/s), and when training
        #: last made a step (None while the worker is not training: waiting for, or joining, a generation).
        self._progress: tuple[int, int, int, int, float, float] = (0, 0, 1, 0, 0.0, 0.0)
        self._stepped_at: float | None = None
        #: The generation the pending CheckpointNow was meant for.
        self._checkpoint_generation = -1
        self._done = threading.Event()
        self._lock = threading.Lock()

    # -- inputs from other threads -------------------------------------------------------------------------------

    def _serve(self, job_id: str) -> None:
        """From now on this worker trains ``job_id``: its checkpoints and messages are that job's."""
        self.config.job_id = job_id
        if self.config.bucket:
            self.store = S3CheckpointStore(self.config.bucket, job_id)
            self.checkpointer = AsyncCheckpointer(self.store)

    @property
    def job_id(self) -> str:
        if self.config.job_id is None:
            raise RuntimeError("no job yet: the worker has not been placed")
        return self.config.job_id

    def on_command(self, command: CheckpointNow | Reconfigure | Stop) -> None:
        if self.config.job_id is None:
            # Booted before placement: the first Reconfigure (the control channel lets no other command through
            # before it) names the job. Set up before the membership is offered, so the run finds it ready.
            self._serve(command.job_id)
        if command.generation < self.generation:
            log.info("ignoring %s of generation %d (now %d)", command.type, command.generation, self.generation)
            return
        if isinstance(command, Reconfigure):
            # Not a pending flag: each step boundary asks discovery whether a generation newer than the one being
            # trained is known, so the Reconfigure that starts a generation never ends it.
            if self.commands is not None:
                self.commands.offer(command)
        elif isinstance(command, CheckpointNow):
            log.info("CheckpointNow (%s): checkpointing at the next step boundary", command.reason)
            self._checkpoint_generation = command.generation
            self._raise(self.CHECKPOINT)
        else:
            log.info("Stop (%s): stopping at the next step boundary", command.reason)
            self._raise(self.STOP)
            self.discovery.close()  # a worker waiting for a membership stops now

    def leave(self, why: str) -> None:
        """SIGTERM or a spot notice: checkpoint at the next step boundary, then exit.

        The other ranks take the same step boundary, rank 0 writes the checkpoint, and they wait for the control
        plane's next Reconfigure. A worker that is not training (waiting for a membership) exits at once.
        """
        log.warning("%s: checkpointing at the next step boundary, then leaving", why)
        self._leaving = True
        self._raise(self.LEAVE)
        self.discovery.close()

    def _raise(self, flag: int) -> None:
        with self._lock:
            self._pending[flag] = True

    def publish(self, message: Message) -> None:
        """Publishes and waits for the broker (CheckpointCompleted, from the upload thread)."""
        if self.channel is not None:
            try:
                self.channel.publish(message).result(10)
            except Exception:
                log.exception("could not publish %s", message.type)

    def _heartbeats(self) -> None:
        """Beats every ``heartbeat_every_s`` from its own thread: while training, and while waiting for or joining a
        generation (a worker between rings is alive, and must not be swept as silent). A worker whose training stops
        making steps stops beating, so a frozen one is found by the heartbeat sweep.

        Publishes without waiting: a broker that is away (restarting) must not stall anything. One at a time, so an
        outage does not pile them up; the robust connection resumes them once the broker is back.
        """
        config = self.config
        stall_s = max(30.0, 6 * config.heartbeat_every_s)
        while not self._done.wait(config.heartbeat_every_s):
            if self.channel is None or (self._beating is not None and not self._beating.done()):
                continue
            stepped = self._stepped_at
            if stepped is not None and time.monotonic() - stepped > stall_s:
                continue  # training is stuck: stay silent
            generation, rank, world, step, loss, rate = self._progress
            if generation < 1:
                continue  # not a member of any ring yet: nobody waits for its beats
            if stepped is None:
                generation = max(generation, self.discovery.generation)  # the newest one it waits for
            beat = Heartbeat(
                job_id=self.job_id,
                instance_id=config.instance_id,
                generation=generation,
                rank=rank,
                world_size=world,
                step=step,
                loss=loss,
                samples_per_second=rate,
            )

            def report(future: Future[None]) -> None:
                if not future.cancelled() and future.exception() is not None:
                    log.warning("could not publish a Heartbeat: %s", future.exception())

            self._beating = self.channel.publish(beat)
            self._beating.add_done_callback(report)

    # -- the run -------------------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        config = self.config
        if config.broker_url:
            self.channel = ControlChannel(config.broker_url, config.job_id, config.instance_id, self.on_command)
            self.channel.start()
            job = f"of job {config.job_id}" if config.job_id else "(not placed on a job yet)"
            print(f"control channel ready: waiting for a Reconfigure {job}", flush=True)
        if config.metadata_url:
            SpotNoticeWatcher(config.metadata_url, lambda notice: self.leave("spot interruption notice")).start()
        if threading.current_thread() is threading.main_thread():
            install_sigterm(lambda: self.leave("SIGTERM"))
        if self.store is not None:
            newest = self.store.load_newest()
            if newest is not None:
                manifest, tree = newest
                self.state.load(tree)
                log.info("resumed from checkpoint step %d (generation %d)", manifest.step, manifest.generation)
        if self.channel is not None:
            threading.Thread(target=self._heartbeats, daemon=True, name="heartbeats").start()
        try:
            outcome = run_elastic(
                self.state,
                self._train,
                self.discovery,
                timeout_s=config.timeout_s,
                join_timeout_s=config.join_timeout_s,
                wait_s=config.wait_s,
                first_wait_s=UNPLACED_WAIT_S if config.job_id is None else None,
                on_failure=self._ring_failed,
                before_sync=self._restore_checkpoint,
            )
        finally:
            self._done.set()
            if self.checkpointer is not None:
                self.checkpointer.wait()
            if self.channel is not None:
                self.channel.close()
        if config.final_state is not None:
            torch.save(self.model.state_dict(), config.final_state)
        print(f"finished: {outcome.value} at step {self.state.step}", flush=True)
        return outcome

    def _ring_failed(self, membership: Membership, error: BaseException) -> None:
        """A collective failed: tell the control plane at once (it finds the lost peer) instead of waiting for a
        heartbeat to go missing. The state is already rolled back to the last commit."""
        reason = (str(error).splitlines() or [type(error).__name__])[0][:400] or type(error).__name__
        self.publish(
            WorkerFailed(
                job_id=self.job_id,
                instance_id=self.config.instance_id,
                generation=membership.generation,
                rank=membership.rank,
                step=self.state.step,
                reason=f"collective failed: {reason}",
                scope="ring",
            )
        )

    def _boundary_flags(self) -> list[bool]:
        with self._lock:
            local, self._pending = self._pending, [False] * 4
        local[self.RECONFIGURE] = self.discovery.newer(self.generation)
        flags = torch.tensor([float(f) for f in local])
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return [bool(f) for f in flags.tolist()]

    def _restore_checkpoint(self, membership: Membership) -> None:
        """A Reconfigure that names a checkpoint restarts the job from it (every rank loads it, then syncs)."""
        ref = membership.checkpoint
        if ref is None:
            return
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
        self.state.load(tree)
        self.state.commit()
        log.info("restored checkpoint step %d for generation %d", manifest.step, membership.generation)

    def _checkpoint(self, membership: Membership, blocking: bool, emergency: bool, final: bool = False) -> None:
        if self.checkpointer is None:
            if emergency and membership.rank == 0:
                log.warning(
                    "no checkpoint bucket configured: the emergency checkpoint at step %d is skipped", self.state.step
                )
            return
        if membership.rank != 0:
            return  # the state is replicated: rank 0 writes it for everyone
        step, generation = self.state.step, membership.generation

        def done(saved: SavedCheckpoint) -> None:
            self._report(saved, generation, emergency=emergency, final=final)

        if blocking:
            done(self.checkpointer.save(step, generation, membership.world_size, self.state.tree()))
        else:
            self.checkpointer.save_async(step, generation, membership.world_size, self.state.tree(), done)

    def _report(self, saved: SavedCheckpoint, generation: int, *, emergency: bool, final: bool) -> None:
        self.publish(
            CheckpointCompleted(
                job_id=self.job_id,
                instance_id=self.config.instance_id,
                generation=generation,
                step=saved.step,
                uri=saved.uri,
                manifest_sha256=saved.manifest_sha256,
                size_bytes=saved.size_bytes,
                emergency=emergency,
                final=final,
            )
        )

    def _train(self, membership: Membership) -> Outcome:
        config, state = self.config, self.state
        self.generation = membership.generation
        wire = _WIRE[config.wire]
        backend = select_backend(list(config.backends), wire_dtype=wire)
        opt = DistributedOptimizer(
            self.optimizer,
            self.model.parameters(),
            backend,
            bucket_bytes=config.bucket_bytes,
            backward_passes_per_step=config.backward_passes_per_step,
        )
        rank, world = membership.rank, membership.world_size
        with self._lock:
            if self._checkpoint_generation < membership.generation:
                # Asked of a ring that is gone (it arrived while this worker waited for the new one): the new
                # ring's state is no less durable than what that checkpoint would have saved.
                self._pending[self.CHECKPOINT] = False
        samples, window_start = 0, time.perf_counter()
        self._stepped_at = time.monotonic()
        try:
            while state.step < config.steps:
                flags = self._boundary_flags()
                if flags[self.CHECKPOINT] or flags[self.LEAVE]:
                    # Notice was given (CheckpointNow, SIGTERM or a spot notice on any rank): an emergency checkpoint,
                    # blocking when a rank is about to go so that it lands before the process does.
                    self._checkpoint(membership, blocking=flags[self.LEAVE], emergency=True)
                if flags[self.LEAVE] or flags[self.STOP]:
                    if self._leaving_or_stop(flags):
                        if flags[self.LEAVE] and self._leaving:
                            self._await_checkpoint(membership)
                        return Outcome.STOPPED
                    state.commit()
                    log.info("a rank leaves after step %d: leaving generation %d", state.step, self.generation)
                    return Outcome.CHANGED
                if flags[self.RECONFIGURE]:
                    state.commit()
                    log.info("membership changes after step %d: leaving generation %d", state.step, self.generation)
                    return Outcome.CHANGED
                opt.zero_grad()
                batch = self.data.batch(rank, world)
                passes = config.backward_passes_per_step
                for x, y in zip(batch.x.chunk(passes), batch.y.chunk(passes), strict=True):
                    loss = torch.nn.functional.cross_entropy(self.model(x), y) * batch.loss_scale
                    loss.backward()
                opt.step()
                self.data.advance()
                state.step += 1
                samples += config.global_batch
                if config.step_delay_s:
                    time.sleep(config.step_delay_s)  # demo pacing only
                if state.step % config.commit_every == 0:
                    state.commit()
                if state.step % config.checkpoint_every == 0:
                    self._checkpoint(membership, blocking=False, emergency=False)
                now = time.perf_counter()
                rate = samples / max(now - window_start, 1e-9)
                if state.step % config.log_every == 0 or state.step == config.steps:
                    print(
                        f"step {state.step} loss {loss.item():.4f} samples/s {rate:.0f} "
                        f"world {world} rank {rank} generation {membership.generation}",
                        flush=True,
                    )
                    samples, window_start = 0, now
                self._progress = (membership.generation, rank, world, state.step, float(loss.item()), float(rate))
                self._stepped_at = time.monotonic()
            if self.checkpointer is not None:
                # The last step's checkpoint is the job's result: reported as final, which ends the job.
                self.checkpointer.wait()
                last = self.checkpointer.last
                if last is not None and last.step == state.step:
                    if rank == 0:
                        self._report(last, membership.generation, emergency=False, final=True)
                else:
                    self._checkpoint(membership, blocking=True, emergency=False, final=True)
            return Outcome.DONE
        finally:
            self._stepped_at = None  # not training: the heartbeat says it waits
            opt.close()
            backend.close()

    def _await_checkpoint(self, membership: Membership, timeout_s: float = 120.0) -> None:
        """A leaving rank other than 0 stays until rank 0's emergency checkpoint is in S3, so that it exits only
        once its work is durable (rank 0 writes for everyone)."""
        if self.store is None or membership.rank == 0:
            return
        step = self.state.step
        deadline = time.monotonic() + timeout_s
        while not self.store.exists(step):
            if time.monotonic() >= deadline:
                log.warning("leaving without seeing the checkpoint of step %d within %.0fs", step, timeout_s)
                return
            time.sleep(0.1)
        log.info("checkpoint step %d saved by rank 0: leaving", step)

    def _leaving_or_stop(self, flags: list[bool]) -> bool:
        # Stop ends everyone; a LEAVE ends only the worker that is going (SIGTERM, spot notice) while the others
        # leave the group and wait for the control plane's next Reconfigure.
        return flags[self.STOP] or self._leaving
