"""Elastic training, Horovod's way: ``TorchState`` with commit/restore/sync, ``ElasticSampler`` and ``@run``.

```python
import training_worker as rf

@rf.elastic.run
def train(state):
    for state.epoch in range(state.epoch, epochs):
        state.sampler.set_epoch(state.epoch)
        for x, y in loader:            # DataLoader(dataset, batch_sampler=state.sampler)
            ...; optimizer.step()
            state.commit()             # a step boundary: membership changes surface here

state = rf.elastic.TorchState(model=model, optimizer=optimizer, sampler=sampler, epoch=0)
train(state)
```

A failed collective (a peer died) restores the last commit, re-forms the ring with whoever is left (the survivors
agree on that among themselves, see ``training_worker.runtime.ring.Ring.heal``) and calls ``train(state)`` again; a
membership change (a replacement joins, a worker leaves with notice) raises ``HostsUpdatedInterrupt`` out of
``state.commit()`` and re-forms the same way without counting as a failure. When ``train`` returns, the runtime
writes the job's final checkpoint. ``state.commit()`` is a collective: every rank calls it at the same points (every
step, or every few).
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable, Iterator, Sized
from concurrent.futures import Future
from typing import Any, ParamSpec, TypeVar

import torch

from ringfleet.contracts.training import CollectiveFailed, RingShrank, StateSynced
from training_worker import runtime as _rt
from training_worker.checkpoint import snapshot
from training_worker.optimizer import DistributedOptimizer
from training_worker.runtime import CollectiveError, HostsUpdatedInterrupt, Stopped
from training_worker.tree import broadcast_tree

__all__ = ["ElasticSampler", "HostsUpdatedInterrupt", "TorchState", "run"]

log = logging.getLogger("training_worker.elastic")

P = ParamSpec("P")
R = TypeVar("R")


class ElasticSampler(torch.utils.data.Sampler[list[int]]):
    """A batch sampler whose global batch stays ``global_batch_size`` whatever the world size.

    Each epoch is one permutation of the dataset (seeded by ``seed`` and the epoch), cut into global batches; rank r
    of W takes the r-th of W near-equal slices of each. The position is global (batches consumed in the epoch), not
    per rank, so after a world change the new ring continues exactly where the old one stopped: no sample repeated,
    none skipped. A trailing partial batch is dropped. Use it as ``DataLoader(dataset, batch_sampler=sampler)``; a
    batch counts as consumed when the loader takes it (so keep ``num_workers=0``, or the loader's prefetching runs
    ahead of the commits).

    When W does not divide the global batch, ranks hold shares of different sizes; the DistributedOptimizer then
    weights each rank's gradient by its share, so the applied gradient is still the global batch's mean.
    """

    def __init__(self, dataset: Sized, global_batch_size: int, *, shuffle: bool = True, seed: int = 0) -> None:
        if not 0 < global_batch_size <= len(dataset):
            raise ValueError(
                f"global_batch_size {global_batch_size} must be between 1 and the dataset size {len(dataset)}"
            )
        self.size = len(dataset)
        self.global_batch_size = global_batch_size
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        #: Global batches of this epoch consumed so far.
        self.position = 0
        self._cached: tuple[tuple[int, int, bool], torch.Tensor] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Moves to ``epoch`` (from its start); the epoch it is in already keeps its position, so calling this at
        the top of every epoch resumes a half-done epoch where it stopped."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.global_batch_size

    def _order(self) -> torch.Tensor:
        key = (self.epoch, self.seed, self.shuffle)
        if self._cached is None or self._cached[0] != key:
            order = (
                torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch))
                if self.shuffle
                else torch.arange(self.size)
            )
            self._cached = (key, order)
        return self._cached[1]

    def share(self, rank: int, world: int) -> tuple[list[int], float]:
        """Rank ``rank`` of ``world``'s share of the next global batch, with its gradient weight (share size x world
        / global batch: 1 when the world divides the batch); advances the position."""
        g = self.global_batch_size
        batch = self._order()[self.position * g : (self.position + 1) * g]
        mine = batch[rank * g // world : (rank + 1) * g // world]
        self.position += 1
        return mine.tolist(), len(mine) * world / g

    def __iter__(self) -> Iterator[list[int]]:
        runtime = _rt.current()
        while self.position < self.batches_per_epoch:
            # Asked every batch: the ring may shrink between two (a worker left with notice). Before the first
            # collective the group is not formed yet, but init() already knows this rank's place (pending).
            membership = runtime.ring.membership or runtime.ring.pending
            rank, world = (membership.rank, membership.world_size) if membership is not None else (0, 1)
            mine, grad_scale = self.share(rank, world)
            runtime.progress.took_share(grad_scale)
            yield mine

    def __len__(self) -> int:
        return self.batches_per_epoch - self.position

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = int(state.get("global_batch_size", self.global_batch_size))
        if saved != self.global_batch_size:
            raise ValueError(
                f"the checkpoint's sampler read global batches of {saved} samples, this one reads "
                f"{self.global_batch_size}: its position would mean other samples; resume with the same global batch"
            )
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])


def _has_state(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TorchState:
    """What a job's training is: model, optimizer, sampler, any other keyword (``epoch=0``, ``scheduler=...``) and
    the random number generators, with an in-memory ``commit()`` to fall back to.

    Keywords with ``state_dict()``/``load_state_dict()`` (LR schedulers, GradScaler, another model) are saved through
    them; plain values (numbers, lists) as they are, and read and written as attributes (``state.epoch``). A
    checkpoint holds exactly this, and so does what a survivor sends a joining worker.
    """

    def __init__(
        self,
        model: torch.nn.Module | None = None,
        optimizer: Any = None,
        sampler: ElasticSampler | None = None,
        **values: Any,
    ) -> None:
        self._names = list(values)
        self.model, self.optimizer, self.sampler = model, optimizer, sampler
        for name, value in values.items():
            setattr(self, name, value)
        self._commit: dict[str, Any] | None = None
        #: A commit whose parameters and optimizer state are being copied: (the copy, what was copied at once, the
        #: model's key order).
        self._copying: tuple[Future[Any], dict[str, Any], list[str]] | None = None
        self._reset_callbacks: list[Callable[[], None]] = []
        self._restored = False
        if sampler is not None:
            _rt.current().progress.reads_global_batches(sampler.global_batch_size)

    def register_reset_callbacks(self, callbacks: list[Callable[[], None]]) -> None:
        """Called after every re-formed ring (a new world size), before the state syncs: rescale learning rates..."""
        self._reset_callbacks.extend(callbacks)

    def on_reset(self) -> None:
        for callback in self._reset_callbacks:
            callback()

    # -- the tree ---------------------------------------------------------------------------------------------------

    def tree(self) -> dict[str, Any]:
        values = {n: (v.state_dict() if _has_state(v) else v) for n in self._names for v in [getattr(self, n)]}
        return {
            "model": self.model.state_dict() if self.model is not None else {},
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else {},
            "trainer": {
                "step": _rt.current().progress.step,
                "sampler": self.sampler.state_dict() if self.sampler is not None else {},
                "values": values,
                "rng": _rng_state(),
            },
        }

    def load(self, tree: dict[str, Any]) -> None:
        _rt.current().boundary.before_update()  # a commit still being copied must not see the state change under it
        if self.model is not None:
            self.model.load_state_dict(tree["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(tree["optimizer"])
        trainer = tree["trainer"]
        _rt.current().progress.resumed_at(int(trainer["step"]))
        if self.sampler is not None:
            self.sampler.load_state_dict(trainer["sampler"])
        for name in self._names:
            current, saved = getattr(self, name), trainer["values"][name]
            if _has_state(current):
                current.load_state_dict(saved)
            else:
                setattr(self, name, saved)
        _set_rng_state(trainer["rng"])
        self._restored = True

    def committed(self) -> dict[str, Any]:
        """The last commit (what a checkpoint writes)."""
        self._settle()
        if self._commit is None:
            self.save()
        assert self._commit is not None
        return self._commit

    # -- Horovod's State interface ----------------------------------------------------------------------------------

    def save(self) -> None:
        """Snapshots the state in memory (no collective).

        With a DistributedOptimizer the model's parameters and the optimizer's state are copied in the background,
        while the next step's forward and backward run: only the optimizer changes them, and it waits for the copy
        before it does (``StepBoundary.before_update``). Buffers (BatchNorm's running statistics, which forward
        changes), the sampler, the values and the RNGs are copied at once. A commit then costs the step next to nothing
        (``bench/checkpoint_stall.py`` measures it).
        """
        self._settle()
        tree = self.tree()
        if not isinstance(self.optimizer, DistributedOptimizer):
            self._commit = snapshot(tree)
            return
        owned = {p.data_ptr() for p in self.model.parameters()} if self.model is not None else set()
        later: dict[str, Any] = {
            "model": {k: v for k, v in tree["model"].items() if v.data_ptr() in owned},
            "optimizer": tree["optimizer"],
        }
        now = {
            "model": snapshot({k: v for k, v in tree["model"].items() if v.data_ptr() not in owned}),
            "trainer": snapshot(tree["trainer"]),
        }
        self._copying = (_rt.current().boundary.copy_async(later), now, list(tree["model"]))

    def _settle(self) -> None:
        """Completes a commit whose tensors were still being copied."""
        if self._copying is None:
            return
        future, now, order = self._copying
        self._copying = None
        copied = future.result()
        model = {**now["model"], **copied["model"]}
        self._commit = {
            "model": {k: model[k] for k in order},
            "optimizer": copied["optimizer"],
            "trainer": now["trainer"],
        }

    def restore(self) -> None:
        """Back to the last commit; a step the optimizer had half reduced is forgotten."""
        self._settle()
        if self._commit is not None:
            self.load(snapshot(self._commit))
        reset = getattr(self.optimizer, "reset", None)
        if callable(reset):
            reset()

    def commit(self) -> None:
        """Snapshots the state and takes a step boundary with the other ranks: checkpoints when asked or due, and
        raises HostsUpdatedInterrupt when the membership changes. A collective: every rank calls it together."""
        self.save()
        _rt.current().boundary.reach(self)

    def check_host_updates(self) -> None:
        """A step boundary without a snapshot (Horovod's name)."""
        _rt.current().boundary.reach(self)

    def sync(self) -> int:
        """Makes every rank hold the state of the rank furthest ahead (a survivor, not a joiner); returns its rank.

        When every rank is fresh (a job starting, or restarting after all its workers were lost), rank 0 first loads
        the job's newest checkpoint that verifies, so the job resumes there.
        """
        import torch.distributed as dist

        runtime = _rt.current()
        membership = runtime.ring.require_membership()
        named = runtime.tiers.restore_named(membership)
        if named is not None:
            self.load(named)
        # (step, has state) of every rank, as tensors: nothing a peer sends is unpickled.
        mine = torch.tensor([runtime.progress.step, int(self._restored)], dtype=torch.int64)
        gathered = [torch.empty_like(mine) for _ in range(membership.world_size)]
        _rt.collective(lambda: dist.all_gather(gathered, mine, group=runtime.ring.group))
        steps: list[tuple[int, bool]] = [(int(t[0]), bool(t[1])) for t in gathered]
        fresh = all(step == 0 and not restored for step, restored in steps)
        if fresh and membership.rank == 0:
            newest = runtime.tiers.newest_checkpoint()
            if newest is not None:
                self.load(newest)
                steps[0] = (runtime.progress.step, True)
        root = max(range(len(steps)), key=lambda r: (steps[r], -r))
        tree = _rt.collective(lambda: broadcast_tree(self.tree(), root=root, group=runtime.ring.group))
        if membership.rank != root:
            self.load(tree)
        self.save()
        runtime.tiers.count_interval_from(runtime.progress.step)
        return root


def _report_failure(runtime: _rt.Runtime, e: CollectiveError, failed_at: int) -> None:
    """Logs and emits a failed collective once the commit is restored: apart, so ``run``'s loop stays its decisions."""
    log.warning(
        "collective failed at step %d in generation %d (%s): restored the commit of step %d, failure %d/%d",
        failed_at,
        runtime.ring.generation,
        str(e).splitlines()[0] if str(e) else type(e).__name__,
        runtime.progress.step,
        runtime.ring.failures + 1,
        runtime.config.max_failures,
    )
    runtime.events.emit(
        CollectiveFailed, generation=runtime.ring.generation, reached=failed_at, step=runtime.progress.step
    )


def run(func: Callable[..., R]) -> Callable[..., R]:
    """Wraps the training function ``func(state, ...)`` so that it survives lost peers and membership changes.

    Each (re-)formed ring runs the reset callbacks (after the first), syncs the state from the rank furthest ahead
    and calls ``func``. A failed collective restores the last commit and re-forms (at most ``max_failures`` times in
    a row of failures); ``HostsUpdatedInterrupt`` re-forms without counting. When ``func`` returns, the runtime
    writes the final checkpoint and the result is returned.
    """

    @functools.wraps(func)
    def wrapper(state: TorchState, *args: Any, **kwargs: Any) -> R:
        runtime = _rt.current()
        if not runtime.initialized:
            raise RuntimeError("call training_worker.init() before the @elastic.run function")
        first = True
        healed: _rt.Healed | None = None
        while True:
            try:
                if runtime.ring.membership is None:
                    runtime.ring.join_next()
                if not first:
                    state.on_reset()
                began = time.monotonic()
                root = state.sync()
                log.debug("state sync took %.3f s", time.monotonic() - began)
                membership = runtime.ring.require_membership()
                log.info(
                    "generation %d: state synced from rank %d at step %d",
                    membership.generation,
                    root,
                    runtime.progress.step,
                )
                runtime.events.emit(StateSynced, generation=membership.generation, step=runtime.progress.step)
                if healed is not None:
                    log.info(
                        "generation %d: shrank to %d at step %d without the lost rank(s) %s, agreed among the "
                        "survivors and re-formed in %.3f s; training on as rank %d",
                        healed.generation,
                        healed.world_size,
                        runtime.progress.step,
                        list(healed.lost),
                        time.monotonic() - began + healed.took_s,
                        healed.rank,
                    )
                    runtime.events.emit(
                        RingShrank, generation=healed.generation, step=runtime.progress.step, world=healed.world_size
                    )
                    healed = None
                first = False
                result = func(state, *args, **kwargs)
            except HostsUpdatedInterrupt as e:
                log.info(
                    "left generation %d at step %d, a membership change and not a failure (%s; failures: %d): "
                    "waiting for a Reconfigure newer than generation %d",
                    runtime.ring.generation,
                    runtime.progress.step,
                    e,
                    runtime.ring.failures,
                    runtime.ring.generation,
                )
                runtime.ring.leave_group()
                continue
            except CollectiveError as e:
                failed_at = runtime.progress.step
                state.restore()
                _report_failure(runtime, e, failed_at)
                first = False
                healed = runtime.ring.heal(e)
                if healed is not None:
                    # The survivors formed their own ring: sync and train on; the control plane was told.
                    if runtime.ring.failures >= runtime.config.max_failures:
                        raise
                    continue
                runtime.ring.ring_failed(e)
                runtime.ring.leave_group()
                if runtime.ring.failures >= runtime.config.max_failures:
                    raise
                log.info("waiting for a Reconfigure newer than generation %d", runtime.ring.generation)
                continue
            except Stopped:
                runtime.ring.leave_group()
                raise
            runtime.finish(state)
            return result

    return wrapper
