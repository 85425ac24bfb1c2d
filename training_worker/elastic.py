"""Elastic training: state with commit/restore/sync, membership behind HostDiscovery, and the retrying run loop."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from ringfleet.contracts import parse_message
from ringfleet.contracts.messages import CheckpointRef, Reconfigure
from training_worker.checkpoint import snapshot
from training_worker.data import ShardedDataSource
from training_worker.optimizer import broadcast_tree

__all__ = [
    "CommandDiscovery",
    "ElasticState",
    "FileDiscovery",
    "FixedHosts",
    "HostDiscovery",
    "Membership",
    "Outcome",
    "run_elastic",
]

log = logging.getLogger("training_worker.elastic")


@dataclass(frozen=True)
class Membership:
    """Who this worker is in one generation of the job."""

    generation: int
    rank: int
    world_size: int
    rendezvous: str  # host:port of rank 0's store
    #: Restore this durable checkpoint before syncing (the control plane restarts the job from S3); None: keep the
    #: in-memory state and sync it from a survivor.
    checkpoint: CheckpointRef | None = None

    @classmethod
    def from_reconfigure(cls, command: Reconfigure, instance_id: str) -> Membership | None:
        """This instance's place in ``command``, or None when the new generation leaves it out."""
        if instance_id not in command.ranks:
            return None
        return cls(
            command.generation, command.ranks[instance_id], command.world_size, command.rendezvous, command.checkpoint
        )


class HostDiscovery(Protocol):
    """Where memberships come from: the control plane's Reconfigure in production, something fixed in tests."""

    @property
    def generation(self) -> int:
        """The newest generation known, whether or not it includes this worker; -1 before the first."""
        ...

    @property
    def closed(self) -> bool:
        """Whether this worker is done with memberships (Stop, SIGTERM, a spot notice): waiting returns at once."""
        ...

    def wait(self, after_generation: int, timeout: float) -> Membership | None:
        """The first membership newer than ``after_generation``, waiting up to ``timeout`` seconds; None when the
        newest generation leaves this worker out, when the wait times out, or once closed."""
        ...

    def newer(self, than_generation: int) -> bool:
        """Whether a newer membership (or the end of this worker's part) is known; must not block."""
        ...

    def close(self) -> None:
        """Ends every present and future wait: the worker is leaving."""
        ...


class FixedHosts:
    """One membership for the whole run (standalone use with --static-world, and tests)."""

    def __init__(self, membership: Membership) -> None:
        self.membership = membership
        self._closed = False

    @property
    def generation(self) -> int:
        return self.membership.generation

    @property
    def closed(self) -> bool:
        return self._closed

    def wait(self, after_generation: int, timeout: float) -> Membership | None:
        if self._closed:
            return None
        return self.membership if self.membership.generation > after_generation else None

    def newer(self, than_generation: int) -> bool:
        return False

    def close(self) -> None:
        self._closed = True


class CommandDiscovery:
    """Memberships from Reconfigure commands, fed by the control channel; older generations are ignored."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        self._latest: Reconfigure | None = None
        self._closed = False
        self._cond = threading.Condition()

    def offer(self, command: Reconfigure) -> bool:
        """Takes ``command`` if it is newer than every one seen; returns whether it did."""
        with self._cond:
            if self._latest is not None and command.generation <= self._latest.generation:
                known = self._latest.generation
                log.info("ignoring Reconfigure of generation %d: %d is known", command.generation, known)
                return False
            self._latest = command
            self._cond.notify_all()
            return True

    @property
    def generation(self) -> int:
        return -1 if self._latest is None else self._latest.generation

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        # Called from a signal handler too: the main thread may be inside wait(), whose lock it has released.
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait(self, after_generation: int, timeout: float) -> Membership | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._latest is None or self._latest.generation <= after_generation:
                if self._closed:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)
            latest = self._latest
        return Membership.from_reconfigure(latest, self.instance_id)

    def newer(self, than_generation: int) -> bool:
        return self.generation > than_generation


class FileDiscovery(CommandDiscovery):
    """A Reconfigure message in a JSON file, re-read when asked (like Horovod's discovery script): tests and
    hand-run fleets play the control plane by rewriting the file."""

    def __init__(self, path: Path, instance_id: str) -> None:
        super().__init__(instance_id)
        self.path = path
        self._mtime = 0.0

    def _refresh(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
            if mtime == self._mtime:
                return
            command = parse_message(json.loads(self.path.read_text()))
        except (OSError, ValueError):
            return  # absent or half-written: look again later
        self._mtime = mtime
        if isinstance(command, Reconfigure):
            self.offer(command)

    def wait(self, after_generation: int, timeout: float) -> Membership | None:
        deadline = time.monotonic() + timeout
        while True:
            self._refresh()
            found = super().wait(after_generation, 0)
            if found is not None or self.generation > after_generation or self.closed or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def newer(self, than_generation: int) -> bool:
        self._refresh()
        return super().newer(than_generation)


class ElasticState:
    """Model, optimizer, step and data position, with a cheap in-memory ``commit()`` to fall back to."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: ShardedDataSource) -> None:
        self.model, self.optimizer, self.data = model, optimizer, data
        self.step = 0
        self._commit: dict[str, Any] | None = None
        self.committed_step = -1

    def tree(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "trainer": {"step": self.step, "data": self.data.state_dict(), "rng": torch.get_rng_state()},
        }

    def load(self, tree: dict[str, Any]) -> None:
        self.model.load_state_dict(tree["model"])
        self.optimizer.load_state_dict(tree["optimizer"])
        trainer = tree["trainer"]
        self.step = int(trainer["step"])
        self.data.load_state_dict(trainer["data"])
        torch.set_rng_state(trainer["rng"])

    def commit(self) -> None:
        self._commit = snapshot(self.tree())
        self.committed_step = self.step

    def restore(self) -> None:
        if self._commit is not None:
            self.load(snapshot(self._commit))

    def sync(self) -> int:
        """Makes every rank hold the state of the rank furthest ahead (a survivor, not a joiner); returns its rank."""
        steps: list[int] = [0] * dist.get_world_size()
        dist.all_gather_object(steps, self.step)
        root = max(range(len(steps)), key=lambda r: (steps[r], -r))
        tree = broadcast_tree(self.tree(), root=root)
        if dist.get_rank() != root:
            self.load(tree)
        self.commit()
        return root


class Outcome(Enum):
    DONE = "done"  # trained all steps
    CHANGED = "changed"  # membership changes at a step boundary: re-form, not a failure
    STOPPED = "stopped"  # Stop command, or this worker is leaving (SIGTERM, spot notice)


class Superseded(Exception):
    """A newer generation was announced while this one was being joined: join that one instead (not a failure)."""


#: How long one attempt to reach a rendezvous lasts before the worker checks whether it was superseded.
_CONNECT_SLICE_S = 2.0


def _join(
    membership: Membership,
    backend: str,
    timeout_s: float,
    join_timeout_s: float,
    superseded: Callable[[], bool] = lambda: False,
) -> None:
    """Joins the generation's group once every member has arrived at its rendezvous.

    Two timeouts: members of a new generation arrive over seconds (a survivor still notices the old ring's failure,
    a replacement is starting), so the rendezvous waits up to ``join_timeout_s`` for all of them; once they are
    all there, a collective that stalls for ``timeout_s`` means a dead peer, noticed in seconds. While waiting, a
    newer generation (its rank 0 may never serve this one) ends the wait with ``Superseded``.
    """
    host, port = membership.rendezvous.rsplit(":", 1)
    deadline = time.monotonic() + join_timeout_s

    def check(what: str) -> None:
        if superseded():
            raise Superseded(f"generation {membership.generation} was superseded while {what}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"generation {membership.generation}: {what} for {join_timeout_s:.0f}s")

    store: dist.TCPStore | None = None
    while store is None:
        try:
            store = dist.TCPStore(
                host,
                int(port),
                is_master=membership.rank == 0,
                timeout=timedelta(seconds=_CONNECT_SLICE_S),
                wait_for_workers=False,
            )
        except (RuntimeError, ConnectionError):
            if membership.rank == 0:
                raise  # the server could not bind: no retry helps
            check(f"rank 0's rendezvous at {membership.rendezvous} did not answer")
    # The process group keeps the store (rank 0's serves the rendezvous) until the group is destroyed.
    store.set_timeout(timedelta(seconds=join_timeout_s))
    arrived = store.add("arrived", 1)
    while arrived < membership.world_size:
        check(f"{arrived} of {membership.world_size} members arrived at {membership.rendezvous}")
        time.sleep(0.02)
        arrived = store.add("arrived", 0)
    dist.init_process_group(
        backend,
        store=store,
        rank=membership.rank,
        world_size=membership.world_size,
        # Short: a dead peer must be noticed in seconds. A killed process is usually seen at once (its sockets
        # close); a frozen one only when this runs out.
        timeout=timedelta(seconds=timeout_s),
    )


def _leave() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # after a failure the group may already be half gone
            log.debug("destroying the process group: %s", e)


def run_elastic(
    state: ElasticState,
    train: Callable[[Membership], Outcome],
    discovery: HostDiscovery,
    *,
    backend: str = "gloo",
    timeout_s: float = 10.0,
    join_timeout_s: float = 60.0,
    wait_s: float = 600.0,
    first_wait_s: float | None = None,
    max_failures: int = 10,
    on_failure: Callable[[Membership, BaseException], None] | None = None,
    before_sync: Callable[[Membership], None] | None = None,
) -> Outcome:
    """Runs ``train`` generation after generation until it finishes or stops.

    A failed collective restores the last commit, leaves the group and waits for the next membership (the
    survivors, or a replacement); a membership change at a step boundary re-forms the group without counting as
    a failure. A worker that has not been a member yet waits as a spare through generations that leave it out; a
    member that a newer generation leaves out ends its run, and so does one whose discovery is closed.
    ``before_sync`` runs once the group is joined, before the state is synced (restoring a durable checkpoint).
    ``first_wait_s`` bounds the wait for the first membership instead of ``wait_s`` (a worker that boots with its
    instance may wait long for the scaler to place it).
    """
    failures, generation, member = 0, -1, False
    while True:
        membership = discovery.wait(generation, wait_s if member or first_wait_s is None else first_wait_s)
        if membership is None:
            if discovery.closed:
                log.info("leaving: no further generation is joined")
                return Outcome.STOPPED
            newest = discovery.generation
            if newest <= generation:
                raise TimeoutError(f"no membership newer than generation {generation} within {wait_s}s")
            if member:
                log.info("generation %d leaves this worker out: stopping", newest)
                return Outcome.STOPPED
            log.info("generation %d does not include this worker: waiting as a spare", newest)
            generation = newest
            continue
        generation, member = membership.generation, True
        log.info(
            "joining generation %d as rank %d of %d at %s",
            generation,
            membership.rank,
            membership.world_size,
            membership.rendezvous,
        )
        try:
            _join(membership, backend, timeout_s, join_timeout_s, functools.partial(discovery.newer, generation))
            if before_sync is not None:
                before_sync(membership)
            root = state.sync()
            log.info("generation %d: state synced from rank %d at step %d", generation, root, state.step)
            outcome = train(membership)
        except Superseded as e:
            log.info("%s: joining the newer one", e)
            _leave()
            continue
        except (RuntimeError, TimeoutError, ConnectionError) as e:
            failures += 1
            failed_at = state.step
            state.restore()
            log.warning(
                "collective failed at step %d in generation %d (%s): restored the commit of step %d, failure %d/%d",
                failed_at,
                generation,
                str(e).splitlines()[0] if str(e) else type(e).__name__,
                state.step,
                failures,
                max_failures,
            )
            if on_failure is not None:
                on_failure(membership, e)
            _leave()
            if failures >= max_failures:
                raise
            log.info("waiting for a Reconfigure newer than generation %d", generation)
            continue
        _leave()
        if outcome is not Outcome.CHANGED:
            return outcome
        log.info(
            "left generation %d at step %d, a membership change and not a failure (failures: %d): "
            "waiting for a Reconfigure newer than generation %d",
            generation,
            state.step,
            failures,
            generation,
        )
