"""Step boundaries: the script's ``state.commit()`` calls. There every rank OR-s its pending flags (a newer
membership, CheckpointNow, a notice, Stop) in one tiny all-reduce, so every rank acts on them at the same step:
checkpoints when one is asked for or due, shrinks the ring when ranks leave with notice, stops, or leaves for the
newer generation. Also the commits' background copies, which an optimizer step waits for."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
import torch.distributed as dist

from ringfleet.contracts.training import RankLeft
from training_worker.device_copy import copy_async
from training_worker.events import EventLog
from training_worker.membership import Membership
from training_worker.runtime.errors import HostsUpdatedInterrupt, Stopped, collective
from training_worker.runtime.flags import CHECKPOINT, LEAVE, RECONFIGURE, STOP, Flags
from training_worker.runtime.progress import Progress
from training_worker.runtime.ring import Ring
from training_worker.runtime.state import TrainingState
from training_worker.runtime.tiers import CheckpointTiers

__all__ = ["StepBoundary"]

log = logging.getLogger("training_worker")


class StepBoundary:
    """What every rank does together at ``state.commit()``."""

    def __init__(self, ring: Ring, flags: Flags, progress: Progress, tiers: CheckpointTiers, events: EventLog) -> None:
        self._ring = ring
        self._flags = flags
        self._progress = progress
        self._tiers = tiers
        self._events = events
        self._copier: ThreadPoolExecutor | None = None
        self._copies: list[Future[Any]] = []

    def copy_async(self, tree: Any) -> Future[Any]:
        """A snapshot of ``tree`` taken in the background (see ``TorchState.save``)."""
        if self._copier is None:
            self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit-copy")
        future = copy_async(tree, self._copier)
        self._copies.append(future)
        return future

    def before_update(self) -> None:
        """The state is about to change (an optimizer step, a load): every commit still being copied completes."""
        copies, self._copies = self._copies, []
        for future in copies:
            future.result()

    def reach(self, state: TrainingState) -> None:
        """``state.commit()``: every rank learns the pending flags; checkpoints; membership changes and stops."""
        ring, tiers = self._ring, self._tiers
        membership = ring.require_membership()
        local = self._flags.take()
        if ring.left_out(membership):
            # The newest generation goes on without this worker (it is leaving with notice, the control plane
            # replaces it): it leaves now, and the others train on without waiting for anyone.
            self._flags.left_out()
            local[LEAVE] = True
        flags, membership = self._exchange_flags(local, membership)
        self._progress.show(ring.membership)
        step = self._progress.step
        if flags[STOP]:
            raise Stopped("Stop")
        if flags[LEAVE] and ring.shrink(membership):
            # The survivors train on at once, without the leavers; the emergency checkpoint of this step is written
            # by the new ring's rank 0 in the background.
            tiers.checkpoint(state, ring.require_membership(), step, blocking=False, emergency=True)
            state.on_reset()
        elif flags[LEAVE]:
            # Every rank leaves: the checkpoint must land before the processes go.
            tiers.checkpoint(state, membership, step, blocking=True, emergency=True)
            tiers.await_checkpoint(membership, step)
            raise Stopped("leaving: notice given")
        elif flags[CHECKPOINT]:
            tiers.checkpoint(state, membership, step, blocking=False, emergency=True)
        elif tiers.due(step):
            tiers.checkpoint(state, membership, step, blocking=False, emergency=False)
        if flags[RECONFIGURE]:
            log.info("membership changes after step %d: leaving generation %d", step, membership.generation)
            self._events.emit(RankLeft, generation=membership.generation, reached=step)
            raise HostsUpdatedInterrupt(f"generation {ring.discovery.generation} replaces {membership.generation}")

    def _exchange_flags(self, local: list[bool], membership: Membership) -> tuple[list[bool], Membership]:
        """Every rank's flags OR-ed together, and the membership to go on with (a healed ring's Reconfigure adopted)."""
        ring = self._ring
        adopt = ring.adoptable(membership)
        local[RECONFIGURE] = not self._flags.leaving and adopt is None and ring.next_generation_ready(membership)
        # Beside the flags, the generation each rank would adopt, as its max and (negated) min: adopted only when
        # every rank names the same one.
        named = float(adopt.generation if adopt is not None else membership.generation)
        flags_t = torch.tensor([*(float(f) for f in local), named, -named])
        collective(lambda: dist.all_reduce(flags_t, op=dist.ReduceOp.MAX, group=ring.group))
        *flags_v, highest, lowest = flags_t.tolist()
        if adopt is not None and highest == -lowest == named:
            ring.adopt(adopt, membership)
            membership = ring.require_membership()
        return [bool(f) for f in flags_v], membership
