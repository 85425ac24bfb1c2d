"""Training progress: the global step count, what the script reports (loss, ...), the rank's share of the global
batch, the progress lines and ``StepTaken``/``TrainingFinished`` events, and goodput (``GoodputMeter``).

Other parts read it (heartbeats, checkpoints, failure reports); it changes only through its own methods: a step
taken, a state loaded, a share of the batch taken, a report.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from ringfleet.contracts.training import StepTaken, TrainingFinished
from training_worker.events import EventLog
from training_worker.membership import Membership

__all__ = ["GoodputMeter", "Progress"]


class GoodputMeter:
    """Productive training time, for the heartbeat's ``goodput``: the time from one step to the next counts when the
    worker was training all along (no rendezvous, restore or wait between them) and the step is a new highest one
    (a step redone after a rollback to an older commit or checkpoint is lost work, not progress). ``window`` is
    the share of wall time that was productive since the previous call, so each heartbeat reports its own interval."""

    def __init__(self, now: float) -> None:
        self.productive_s = 0.0
        self._best = 0
        self._window = (now, 0.0)

    def stepped(self, step: int, since: float | None, now: float) -> None:
        if since is not None and step > self._best:
            self.productive_s += now - since
        self._best = max(self._best, step)

    def window(self, now: float) -> float | None:
        start, productive = self._window
        self._window = (now, self.productive_s)
        if now <= start:
            return None
        return min(1.0, max(0.0, (self.productive_s - productive) / (now - start)))


class Progress:
    """How far training is, and how fast it goes."""

    def __init__(self, log_every: int, events: EventLog) -> None:
        self._every = log_every
        self._events = events
        #: Global optimizer steps taken (every ``DistributedOptimizer.step()``); saved with the state.
        self.step = 0
        #: What ``report()`` last said (loss, ...), for progress lines and heartbeats.
        self.metrics: dict[str, float] = {}
        #: Samples per global step, when the script's TorchState has an ElasticSampler.
        self.global_batch = 0
        #: Gradient weight of this rank's share of the global batch (see ElasticSampler).
        self.grad_scale = 1.0
        #: When the last step was taken; None while not training (between rings): heartbeats read it.
        self.stepped_at: float | None = None
        #: Whether this worker has trained in some ring (before that, nobody waits for its heartbeats).
        self.trained = False
        self.goodput = GoodputMeter(time.monotonic())
        self._logged = (time.perf_counter(), 0)

    def on_step(self) -> None:
        """A global optimizer step was taken."""
        self.step += 1
        now = time.monotonic()
        self.goodput.stepped(self.step, self.stepped_at, now)
        self.stepped_at = now
        self.trained = True

    def resumed_at(self, step: int) -> None:
        """A state saved at ``step`` was loaded (a commit, a checkpoint, a peer's state)."""
        self.step = step

    def reads_global_batches(self, size: int) -> None:
        """The script's sampler reads global batches of ``size`` samples (for samples/s)."""
        self.global_batch = size

    def took_share(self, grad_scale: float) -> None:
        """This rank took its share of the next global batch, whose gradient weighs ``grad_scale``."""
        self.grad_scale = grad_scale

    def idle(self) -> None:
        """Not training (between rings, or done): the heartbeat says it waits."""
        self.stepped_at = None

    def restart(self) -> None:
        """The script runs again in this process from a fresh state."""
        self.step = 0
        self.metrics = {}
        self.global_batch, self.grad_scale = 0, 1.0

    def reported(self, metrics: Mapping[str, float], membership: Membership | None) -> None:
        """What the script reported (``training_worker.report``), shown in the next progress line."""
        self.metrics.update({k: float(v) for k, v in metrics.items()})
        self.show(membership)

    def show(self, membership: Membership | None) -> None:
        """Prints the progress line once per ``log_every`` steps: from ``report()`` (with the step's loss), else from
        the step boundary."""
        every = self._every
        started, at_step = self._logged
        if membership is None or self.step // every == at_step // every:
            return
        now = time.perf_counter()
        rate = max(0, self.step - at_step) * self.global_batch / max(now - started, 1e-9)
        self.metrics["samples_per_second"] = rate
        self._logged = (now, self.step)
        # "-" until the script reports one (training_worker.report(loss=...)): never a made-up 0.
        loss = f"{self.metrics['loss']:.4f}" if "loss" in self.metrics else "-"
        wall = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(wall)) + f",{int(wall % 1 * 1000):03d}"
        print(
            # Stamped like the log records, so that whoever reads the log (the demo) knows when each step ended.
            f"{stamp} step {self.step} loss {loss} samples/s {rate:.0f} "
            f"world {membership.world_size} rank {membership.rank} generation {membership.generation}\n",
            # One write per line: an instance's slots share its output, and their lines must not interleave.
            end="",
            flush=True,
        )
        self._events.emit(
            StepTaken,
            generation=membership.generation,
            step=self.step,
            rank=membership.rank,
            world=membership.world_size,
            loss=self.metrics.get("loss"),
        )

    def finished(self, generation: int) -> None:
        """The training function returned (its final checkpoint is written)."""
        self.idle()
        print(f"finished: done at step {self.step}\n", end="", flush=True)
        self._events.emit(TrainingFinished, generation=max(generation, 0), outcome="done", step=self.step)
