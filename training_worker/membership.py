"""Membership: who a worker is in each generation of its job, where that comes from, and joining its group.

A generation's membership comes from behind ``HostDiscovery`` (Horovod's idea): the control plane's Reconfigure
commands in production (``CommandDiscovery``), a JSON file re-read on change (``FileDiscovery``), or one fixed ring
(``FixedHosts``: standalone runs, torchrun-style environment variables, tests). Joining waits at rank 0's
rendezvous until every member has arrived, so a ring never forms half-populated.

After a hard kill the survivors agree among themselves who is gone (``agree_survivors``, TorchFT's quorum idea): each
checks in at one of its ring's heal stores with the step it reached, and the first to see every rank but one there
(or, later, a majority) writes the quorum once, compare-and-set; everyone reads that one decision.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Protocol

import torch.distributed as dist

from ringfleet.contracts import parse_message
from ringfleet.contracts.messages import CheckpointRef, Reconfigure

__all__ = [
    "CommandDiscovery",
    "FileDiscovery",
    "FixedHosts",
    "HostDiscovery",
    "Membership",
    "Superseded",
    "agree_survivors",
    "check_rendezvous",
    "join_group",
    "leave_group",
    "quorum",
    "ranks_by_instance",
    "rendezvous_store",
    "ring_identity",
]

log = logging.getLogger("training_worker.membership")


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
    #: The members' instance ids by rank, when known (from a Reconfigure): who is new in the next generation.
    instances: tuple[str, ...] = ()

    #: This process's slot on its instance (torchrun's ``LOCAL_RANK``) and how many its instance runs: the ring's
    #: ranks are contiguous per instance, so the instance's slot 0 is rank ``rank - local_rank``.
    local_rank: int = 0
    local_world: int = 1

    @classmethod
    def from_reconfigure(cls, command: Reconfigure, instance_id: str, local_rank: int = 0) -> Membership | None:
        """Slot ``local_rank`` of this instance's place in ``command``, or None when the new generation leaves it out
        (the instance is not a member, or runs fewer slots in it)."""
        slots = command.slots_of(instance_id)
        if instance_id not in command.ranks or local_rank >= slots:
            return None
        instances = command.process_instances()
        return cls(
            command.generation,
            instances.index(instance_id) + local_rank,
            len(instances),
            command.rendezvous,
            command.checkpoint,
            instances,
            local_rank,
            slots,
        )

    @property
    def instance_count(self) -> int:
        """How many instances the ring spans (its world size when each runs one slot)."""
        return len(set(self.instances)) if self.instances else self.world_size

    def instance_ranks(self) -> list[list[int]] | None:
        """The ranks of each instance, instances in rank order (the hierarchical all-reduce's layout); None when the
        instances are unknown (a fixed ring)."""
        return list(ranks_by_instance(self.instances).values()) if self.instances else None

    def same_instance(self, rank: int) -> set[int]:
        """The ranks of the ring on the instance of ``rank`` (that rank alone when the instances are unknown)."""
        if not self.instances:
            return {rank}
        return set(ranks_by_instance(self.instances)[self.instances[rank]])


def ranks_by_instance(instances: Sequence[str]) -> dict[str, list[int]]:
    """instance -> its ranks, from the instance of each rank (``Membership.instances``), instances in rank order."""
    groups: dict[str, list[int]] = {}
    for rank, instance in enumerate(instances):
        groups.setdefault(instance, []).append(rank)
    return groups


def check_rendezvous(command: Reconfigure) -> str | None:
    """None when ``command``'s rendezvous is on one of its members' addresses (or this machine's loopback, where the
    control plane knows no address: the local cloud); otherwise why it is refused. A worker never dials, and never
    sends its ring's traffic to, a host that is not one of its job's instances."""
    import ipaddress

    host = command.rendezvous_host
    if host in command.hosts.values():
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    known = ", ".join(sorted(set(command.hosts.values()))) or "none"
    return f"rendezvous {command.rendezvous} is not on a member's address (members: {known})"


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

    def __init__(self, instance_id: str, local_rank: int = 0) -> None:
        self.instance_id = instance_id
        self.local_rank = local_rank
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
    def latest(self) -> Reconfigure | None:
        """The newest Reconfigure seen (the instance agent reads the job's program from it)."""
        return self._latest

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
        return Membership.from_reconfigure(latest, self.instance_id, self.local_rank)

    def newer(self, than_generation: int) -> bool:
        return self.generation > than_generation


class FileDiscovery(CommandDiscovery):
    """A Reconfigure message in a JSON file, re-read when asked (like Horovod's discovery script): tests and
    hand-run fleets play the control plane by rewriting the file."""

    def __init__(self, path: Path, instance_id: str, local_rank: int = 0) -> None:
        super().__init__(instance_id, local_rank)
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


class Superseded(Exception):
    """A newer generation was announced while this one was being joined: join that one instead (not a failure)."""


#: How long one attempt to reach a rendezvous lasts before the worker checks whether it was superseded.
_CONNECT_SLICE_S = 2.0


def join_group(
    membership: Membership,
    backend: str,
    timeout_s: float,
    join_timeout_s: float,
    superseded: Callable[[], bool] = lambda: False,
    store: dist.TCPStore | None = None,
) -> None:
    """Joins the generation's group once every member has arrived at its rendezvous (``store``: rank 0's server,
    when it already serves the rendezvous).

    Two timeouts: members of a new generation arrive over seconds (a survivor still notices the old ring's failure,
    a replacement is starting), so the rendezvous waits up to ``join_timeout_s`` for all of them; once they are
    all there, a collective that stalls for ``timeout_s`` means a dead peer, noticed in seconds. While waiting, a
    newer generation (its rank 0 may never serve this one) ends the wait with ``Superseded``.
    """
    deadline = time.monotonic() + join_timeout_s

    def check(what: str) -> None:
        if superseded():
            raise Superseded(f"generation {membership.generation} was superseded while {what}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"generation {membership.generation}: {what} for {join_timeout_s:.0f}s")

    while store is None:
        store = _open_rendezvous(membership)
        if store is None:
            check(f"rank 0's rendezvous at {membership.rendezvous} did not answer for this ring")
    if membership.rank == 0:  # also when the store was served early, before this generation was joined
        store.set("ring", ring_identity(membership))
    # The process group keeps the store (rank 0's serves the rendezvous) until the group is destroyed.
    store.set_timeout(timedelta(seconds=join_timeout_s))
    arrived = store.add("arrived", 1)
    while arrived < membership.world_size:
        check(f"{arrived} of {membership.world_size} members arrived at {membership.rendezvous}")
        time.sleep(0.02)
        arrived = store.add("arrived", 0)
    all_there = time.monotonic()
    dist.init_process_group(
        backend,
        store=store,
        rank=membership.rank,
        world_size=membership.world_size,
        # Short: a dead peer must be noticed in seconds. A killed process is usually seen at once (its sockets
        # close); a frozen one only when this runs out.
        timeout=timedelta(seconds=timeout_s),
    )
    log.info(
        "generation %d: all %d members at the rendezvous, group formed in %.3f s",
        membership.generation,
        membership.world_size,
        time.monotonic() - all_there,
    )


def ring_identity(membership: Membership) -> str:
    """What names one ring at its rendezvous: its generation, size and members. Two rings that meet at one port (two
    jobs' workers on one host) tell each other apart by it."""
    return f"generation {membership.generation} of {membership.world_size}: {','.join(membership.instances)}"


def _open_rendezvous(membership: Membership) -> dist.TCPStore | None:
    """Rank 0: serves the rendezvous (join_group names its ring there). Another rank: the store, once it names this ring
    (None: nothing answers yet, or another ring's store does; the caller retries until its deadline)."""
    if membership.rank == 0:
        try:
            store = rendezvous_store(membership.rendezvous, serve=True, timeout_s=_CONNECT_SLICE_S)
        except (RuntimeError, ConnectionError) as e:  # no retry helps: the control plane's next generation does
            raise RuntimeError(
                f"cannot serve the rendezvous at {membership.rendezvous} ({e}): is another ring on this host using "
                "that port?"
            ) from e
        return store
    try:
        store = rendezvous_store(membership.rendezvous, serve=False, timeout_s=_CONNECT_SLICE_S)
        served = store.get("ring").decode()
    except (RuntimeError, ConnectionError):
        return None
    ring = ring_identity(membership)
    if served != ring:
        log.warning("the rendezvous at %s serves another ring (%s), not %s", membership.rendezvous, served, ring)
        time.sleep(_CONNECT_SLICE_S / 4)
        return None
    return store


def rendezvous_store(rendezvous: str, *, serve: bool, timeout_s: float) -> dist.TCPStore:
    """The TCP store at ``rendezvous``: its server when ``serve`` (rank 0), else a client connected to it."""
    host, port = rendezvous.rsplit(":", 1)
    return dist.TCPStore(host, int(port), is_master=serve, timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


def leave_group() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception as e:  # after a failure the group may already be half gone
            log.debug("destroying the process group: %s", e)


def quorum(
    world_size: int, checked_in: Collection[int], *, waited_out: bool, instances: Sequence[str] = ()
) -> tuple[int, ...] | None:
    """The ranks of a broken ring of ``world_size`` that form the survivors' ring, from the ranks ``checked_in``.

    The unit is the instance (``instances``: the instance of each rank; none given, each rank is its own): an
    instance re-forms with all its slots or not at all, so one slot's process dying drops its whole instance, whose
    other slots are left out (they report it lost; the control plane replaces it). Decided as soon as every instance
    but one is whole (one died: everyone else noticed), or every one is; once the wait is over (``waited_out``),
    the whole instances there if they are a majority. A strict majority is what keeps a partition from forming two
    rings that both believe they are the job. ``()``: no ring (too few; the control plane decides); None: wait on.
    """
    units = ranks_by_instance(instances or [str(r) for r in range(world_size)])
    present = set(checked_in)
    whole = [ranks for ranks in units.values() if present.issuperset(ranks)]
    if len(whole) >= len(units) - 1 or waited_out:
        members = tuple(sorted(r for ranks in whole for r in ranks))
        return members if 2 * len(whole) > len(units) else ()
    return None


def agree_survivors(
    stores: Sequence[dist.Store],
    ring: str,
    rank: int,
    world_size: int,
    step: int,
    wait_s: float,
    instances: Sequence[str] = (),
) -> tuple[int, tuple[int, ...]] | None:
    """Checks in at the first of ``stores`` that answers (the ring's heal stores, its rank 0's first) as ``rank``
    of ring ``ring`` at ``step``, and waits for the survivors' decision (``quorum``'s, by instance: ``instances``):
    (the store's index, the ranks that re-form, in rank order: maybe without this one, maybe none). None when no
    store answers.

    Each survivor checks in at one store only, so two stores never both see a majority.
    """
    for index, store in enumerate(stores):
        try:
            store.set(f"{ring}/step/{rank}", str(step))
            store.add(f"{ring}/in", 1)
        except (RuntimeError, ConnectionError) as e:  # its server died with its rank: try the next
            log.info("heal store %d of ring %s does not answer: %s", index, ring, str(e).splitlines()[0][:200])
            continue
        return index, _decision(store, ring, world_size, wait_s, instances)
    return None


def _decision(
    store: dist.Store, ring: str, world_size: int, wait_s: float, instances: Sequence[str]
) -> tuple[int, ...]:
    deadline = time.monotonic() + wait_s
    decided = f"{ring}/quorum"
    # Worth a look once all but the biggest instance's ranks are in (one instance lost: everyone else noticed).
    enough = world_size - max((len(ranks) for ranks in ranks_by_instance(instances).values()), default=1)
    while not store.check([decided]):
        waited_out = time.monotonic() >= deadline
        if store.add(f"{ring}/in", 0) >= enough or waited_out:
            present = [r for r in range(world_size) if store.check([f"{ring}/step/{r}"])]
            members = quorum(world_size, present, waited_out=waited_out, instances=instances)
            if members is not None:
                # Compare-and-set: the first decision stands; everyone, this rank too, reads that one.
                store.compare_set(decided, "", ",".join(map(str, members)) or "none")
                break
        time.sleep(0.005)
    value = store.get(decided).decode()
    return () if value == "none" else tuple(int(r) for r in value.split(","))
