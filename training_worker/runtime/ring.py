"""The ring this worker trains in: waiting for a membership and joining its group, the generation and place it
holds, leaving it, shrinking it when ranks leave with notice, healing it inside the ring after a hard kill, taking a
newer generation when its newcomers are ready (or as it is, when it names the ring the survivors formed), and
telling the control plane when the ring failed or the script did.

A hard kill is healed inside the ring (``Ring.heal``): the survivors agree among themselves who is gone at the
ring's heal stores and form a ring of their own at once, then tell the control plane, whose Reconfigure naming
exactly that ring is later taken as it is, without a second re-form.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Literal

import torch
import torch.distributed as dist

from ringfleet.contracts.messages import Reconfigure, WorkerFailed
from ringfleet.contracts.training import GenerationJoined, RankLeft, RingShrank
from training_worker.collectives import AllreduceBackend, select_backend
from training_worker.events import EventLog
from training_worker.membership import (
    CommandDiscovery,
    FileDiscovery,
    FixedHosts,
    HostDiscovery,
    Membership,
    Superseded,
    agree_survivors,
    join_group,
    leave_group,
    rendezvous_store,
    ring_identity,
)
from training_worker.runtime.config import RuntimeConfig
from training_worker.runtime.errors import CollectiveError, Stopped, collective
from training_worker.runtime.flags import Flags
from training_worker.runtime.job import Job
from training_worker.runtime.link import ControlLink
from training_worker.runtime.progress import Progress

__all__ = ["SUPERSET_PATIENCE_S", "UNPLACED_WAIT_S", "Healed", "Ring"]

log = logging.getLogger("training_worker")

#: How long the members of a ring wait for each other at its rendezvous once a generation that adds workers to it is
#: known, before they all go to that one instead (see Ring._superseded).
SUPERSET_PATIENCE_S = 1.5
#: How long a worker booted without a job waits to be placed: as long as its instance runs (ten years).
UNPLACED_WAIT_S = 10 * 365 * 86400.0
#: Bytes of one heal store's "host:port" in the exchange that arms a ring (see Ring._arm_heal).
_ADDRESS_BYTES = 64

_WIRE = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class _HealPoint:
    """Where a ring's survivors find each other after a hard kill: a connection to each of its heal stores (rank 0's,
    then rank 1's; this rank's own server among them, kept alive by holding it)."""

    stores: tuple[dist.Store, ...]


@dataclass(frozen=True)
class Healed:
    """A ring the survivors of a hard kill formed among themselves (``Ring.heal``)."""

    generation: int
    #: The ranks of the broken ring that were left out (the lost).
    lost: tuple[int, ...]
    world_size: int
    rank: int
    took_s: float


def _advertised_host(rendezvous: str) -> str:
    """This machine's address on the route to the ring's rendezvous host: where its peers reach a store it serves."""
    import socket

    host = rendezvous.rsplit(":", 1)[0].strip("[]")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, 9))  # UDP: nothing is sent, the kernel only picks the route
            return str(s.getsockname()[0])
    except OSError:
        return host


def _fit(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters: its first line (what failed) and as much of its end (the traceback's
    last frames) as fits."""
    if len(text) <= limit:
        return text
    head, _, rest = text.partition("\n")
    head = head[: limit // 3]
    return f"{head}\n...{rest[-(limit - len(head) - 4) :]}"


def _process_group_backend() -> str:
    # CPU tensors (the step-boundary flags, state broadcasts of CPU state) always go over gloo; CUDA tensors over
    # NCCL when there is a GPU, so the ring and native collectives use NCCL for the model's gradients.
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _discovery(config: RuntimeConfig) -> tuple[HostDiscovery, CommandDiscovery | None]:
    """Where memberships come from (and the control plane's commands, when they do): a fixed ring, a file, the
    control channel, or, with none of them, a ring of one."""
    if config.static is not None:
        return FixedHosts(config.static), None
    if config.discovery_file is not None:
        commands: CommandDiscovery = FileDiscovery(config.discovery_file, config.instance_id, config.local_rank)
        return commands, commands
    if config.broker_url is not None or config.reconfigure_json is not None or config.relayed:
        commands = CommandDiscovery(config.instance_id, config.local_rank)
        if config.reconfigure_json is not None:
            from ringfleet.contracts import parse_message

            command = parse_message(config.reconfigure_json)
            if isinstance(command, Reconfigure):
                commands.offer(command)
        return commands, commands
    # Neither a control plane nor a fixed ring: the script trains alone, a ring of one.
    return FixedHosts(Membership(0, 0, 1, f"127.0.0.1:{_free_port()}")), None


class Ring:
    """The generations this worker is placed in, and the ring (process group and all-reduce backend) it forms."""

    def __init__(
        self,
        config: RuntimeConfig,
        job: Job,
        progress: Progress,
        flags: Flags,
        link: ControlLink,
        events: EventLog,
    ) -> None:
        self._config = config
        self._job = job
        self._progress = progress
        self._flags = flags
        self._link = link
        self._events = events
        self.discovery: HostDiscovery
        #: The control plane's commands (None: a fixed ring, a ring of one).
        self.commands: CommandDiscovery | None
        self.discovery, self.commands = _discovery(config)
        self.membership: Membership | None = None
        #: The membership waited for and known, whose group is not joined yet (see join_next).
        self.pending: Membership | None = None
        #: The newest generation this worker joined (or tried to); commands of older ones are ignored.
        self.generation = -1
        self.member = False  # has been a member of some generation
        #: Rank and world size of the generation joined last (what heartbeats say while the worker is between rings).
        self._place = (0, 1)
        self.backend: AllreduceBackend | None = None
        #: The ring's process group when it is a sub-group of the generation's (the survivors after a shrink); None:
        #: the generation's own (torch's default group).
        self.group: dist.ProcessGroup | None = None
        #: The next generation's rendezvous, served early by its rank 0 / probed by the current ring's rank 0.
        self._served: tuple[int, dist.TCPStore] | None = None
        self._probe: tuple[int, dist.TCPStore] | None = None
        #: The ring's heal stores (None: a ring of fewer than 3, or none formed): see heal().
        self._heal: _HealPoint | None = None
        #: The ring was formed by its survivors (heal), not named by the control plane: a later Reconfigure naming
        #: exactly its members is taken as it is (see _adoptable).
        self._self_formed = False
        #: The survivors of this worker's ring re-formed without it: it reports itself lost (see ring_failed).
        self._left_out_by_survivors = False
        #: Failed collectives so far (``@elastic.run`` gives up at ``max_failures``).
        self.failures = 0

    # -- waiting, joining, leaving -----------------------------------------------------------------------------------

    def whereabouts(self) -> tuple[int, int, int]:
        """The newest generation known (one that adds members is announced before the ring takes it, and the control
        plane counts this worker in it from then on), with the rank and world size of the one joined last."""
        generation = max(self.generation, self.discovery.generation)
        rank, world = self._place
        return generation, rank, world

    def passed_over(self, generation: int) -> None:
        """``generation`` leaves this worker out: it waits on for a newer one."""
        self.generation = generation

    def restart(self) -> None:
        """The script failed and will run again in this process: in a generation newer than every one known now (the
        control plane's restart), never in the one it failed in."""
        self.leave_group()
        self.pending = None
        self.generation = max(self.generation, self.discovery.generation)

    def await_membership(self) -> Membership:
        """The next membership that includes this worker, waiting for it; not joined yet (``pending``). Raises
        Stopped when there is none for it (Stop, a notice, left out of the newest generation)."""
        if self.pending is not None:
            return self.pending
        config = self._config
        while True:
            wait = config.wait_s if self.member else UNPLACED_WAIT_S
            membership = self.discovery.wait(self.generation, wait)
            if membership is not None:
                self.generation, self.member = membership.generation, True
                self._place = (membership.rank, membership.world_size)
                self.pending = membership
                return membership
            if self.discovery.closed:
                raise Stopped("leaving: no further generation is joined")
            newest = self.discovery.generation
            if newest <= self.generation:
                raise TimeoutError(f"no membership newer than generation {self.generation} within {wait}s")
            if self.member:
                log.info("generation %d leaves this worker out: stopping", newest)
                raise Stopped(f"generation {newest} leaves this worker out")
            log.info("generation %d does not include this worker: waiting as a spare", newest)
            self.passed_over(newest)

    def join_next(self) -> Membership:
        """Joins the group of the pending membership, or of the next one (waiting for it).

        A worker arrives at a rendezvous only from here: the first collective its script makes, or its
        ``@elastic.run`` starting, not ``init()``. So a newcomer arrives once its script has loaded its model and
        data, and the ring it joins (which grows only when every newcomer has arrived) never waits for that.
        """
        config = self._config
        while True:
            membership = self.await_membership()
            self.pending = None
            log.info(
                "joining generation %d as rank %d of %d at %s",
                membership.generation,
                membership.rank,
                membership.world_size,
                membership.rendezvous,
            )
            self._events.emit(
                GenerationJoined, generation=membership.generation, rank=membership.rank, world=membership.world_size
            )
            superseded = functools.partial(self._superseded, membership, time.monotonic())
            served = self._served[1] if self._served is not None and self._served[0] == membership.generation else None
            self._served, self._probe = None, None
            try:
                join_group(
                    membership, _process_group_backend(), config.timeout_s, config.join_timeout_s, superseded, served
                )
            except Superseded as e:
                log.info("%s: joining the newer one", e)
                leave_group()
                continue
            except (RuntimeError, TimeoutError, ConnectionError) as e:
                leave_group()
                raise CollectiveError(f"joining generation {membership.generation}: {e}") from e
            self.membership = membership
            self.backend = select_backend(
                list(config.backends), wire_dtype=_WIRE[config.wire], instances=membership.instance_ranks()
            )
            log.info("generation %d: gradients all-reduced by the %s backend", membership.generation, self.backend.name)
            self._self_formed = self._left_out_by_survivors = False
            self._arm_heal()
            self._flags.ring_joined(membership.generation)
            return membership

    def leave_group(self) -> None:
        self._close_ring()
        self.membership = None
        self._heal = None
        self._progress.idle()  # not training: the heartbeat says it waits

    def _close_ring(self) -> None:
        """Ends the ring's process group (its sockets close: a peer still waiting on this rank learns of a failure
        now, not at its timeout); the membership stays."""
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        self.group = None
        leave_group()

    def place(self) -> Membership:
        """This worker's membership, joined or pending (rank and world size are known before the group forms)."""
        place = self.membership or self.pending
        if place is None:
            raise RuntimeError("training_worker is not initialised: call training_worker.init() first")
        return place

    def require_membership(self) -> Membership:
        """The ring's membership, joining its group first when it is only pending."""
        if self.membership is None and self.pending is not None:
            self.join_next()
        if self.membership is None:
            raise RuntimeError("training_worker is not initialised: call training_worker.init() before using the ring")
        return self.membership

    def require_backend(self) -> AllreduceBackend:
        self.require_membership()
        assert self.backend is not None
        return self.backend

    # -- failures, told to the control plane ------------------------------------------------------------------------

    def ring_failed(self, error: BaseException) -> None:
        """A collective failed and the ring did not heal: tell the control plane at once (it finds the lost peer)
        instead of waiting for a heartbeat to go missing. A worker its ring's survivors left out reports itself lost:
        the ring trains on without it, and the control plane replaces it."""
        membership = self.membership
        self.failures += 1
        if not self._link.connected or membership is None:
            return
        self._link.publish(self._failure_report(membership, error, left_out=self._left_out_by_survivors))

    def _failure_report(self, membership: Membership, error: BaseException, *, left_out: bool = False) -> WorkerFailed:
        reason = (str(error).splitlines() or [type(error).__name__])[0][:400] or type(error).__name__
        # Reported in the newest generation this worker belongs to: the control plane may have announced a growth
        # the ring had not taken yet, and it judges a failure against the generation it knows.
        generation, rank = membership.generation, membership.rank
        latest = self.commands.latest if self.commands is not None else None
        if latest is not None and latest.generation > generation and self._config.instance_id in latest.ranks:
            generation, rank = latest.generation, latest.ranks[self._config.instance_id]
        return WorkerFailed(
            job_id=self._job.require(),
            instance_id=self._config.instance_id,
            generation=generation,
            rank=rank,
            step=self._progress.step,
            reason=(
                f"left out of the ring its survivors re-formed after: {reason}"
                if left_out
                else f"collective failed: {reason}"
            ),
            scope="self" if left_out else "ring",
        )

    def instance_lost(self, reason: str) -> None:
        """This instance cannot go on (one of its slots' processes died): the control plane takes it for lost and
        re-forms the ring without it (``WorkerFailed`` scope ``self``)."""
        self._report_self(reason, "self")

    def script_failed(self, reason: str) -> None:
        """The job's script failed on this worker: the control plane counts it against the job's max_restarts."""
        self._report_self(reason, "script")

    def _report_self(self, reason: str, scope: Literal["self", "script"]) -> None:
        if not self._link.connected or self._job.id is None:
            return
        membership = self.membership
        generation = max(self.generation, self.discovery.generation, 0)
        self._link.publish(
            WorkerFailed(
                job_id=self._job.require(),
                instance_id=self._config.instance_id,
                generation=generation,
                rank=membership.rank if membership is not None else 0,
                step=self._progress.step,
                reason=_fit(reason, 1024),
                scope=scope,
            )
        )

    # -- healing a hard kill inside the ring -------------------------------------------------------------------------

    def _arm_heal(self) -> None:
        """Ranks 0 and 1 of the ring just formed each serve a heal store, and every rank connects to both now, while
        they answer, so that after a hard kill the survivors find each other without the control plane (``heal``).

        A ring of fewer than 3 instances is not armed: without its lost one it has no majority (the instance is the
        unit: see ``quorum``). Every rank of the ring calls this at once (the stores' addresses go round in one
        all-gather)."""
        self._heal = None
        membership = self.membership
        if membership is None or membership.instance_count < 3:
            return
        server: dist.TCPStore | None = None
        mine = torch.zeros(_ADDRESS_BYTES, dtype=torch.uint8)
        if membership.rank < 2:
            host = _advertised_host(membership.rendezvous)
            server = dist.TCPStore(host, 0, is_master=True, timeout=timedelta(seconds=2), wait_for_workers=False)
            served = f"{host}:{server.port}".encode()
            mine[: len(served)] = torch.frombuffer(bytearray(served), dtype=torch.uint8)
        gathered = [torch.empty_like(mine) for _ in range(membership.world_size)]
        collective(lambda: dist.all_gather(gathered, mine, group=self.group))
        stores: list[dist.Store] = []
        for rank in (0, 1):
            if rank == membership.rank and server is not None:
                stores.append(server)
                continue
            address = bytes(gathered[rank].tolist()).rstrip(b"\0").decode()
            try:
                stores.append(rendezvous_store(address, serve=False, timeout_s=2.0))
            except (RuntimeError, ConnectionError) as e:
                raise CollectiveError(f"heal store {address} of rank {rank} does not answer: {e}") from e
        self._heal = _HealPoint(tuple(stores))

    def _agree_survivors(self, membership: Membership, point: _HealPoint) -> tuple[int, tuple[int, ...]] | None:
        """The heal store's index and the survivors ``heal`` forms its ring from, once they agree on them; None (and
        why, logged) when they cannot agree or left this worker out: apart, so that ``heal`` reads as its steps."""
        try:
            found = agree_survivors(
                point.stores,
                "heal",
                membership.rank,
                membership.world_size,
                self._progress.step,
                self._config.timeout_s + 1.0,
                membership.instances,
            )
        except (RuntimeError, ConnectionError) as e:  # the store's server died while the survivors agreed
            log.warning("generation %d: the survivors could not agree (%s)", membership.generation, e)
            return None
        if found is None:
            log.warning("generation %d: no heal store answers: waiting for the control plane", membership.generation)
            return None
        index, members = found
        if membership.rank not in members:
            self._left_out_by_survivors = bool(members)
            log.warning(
                "generation %d: %s: waiting for the control plane",
                membership.generation,
                "the survivors re-formed without this worker" if members else "no majority of the ring checked in",
            )
            return None
        return index, members

    def heal(self, error: BaseException) -> Healed | None:
        """A collective failed (a peer died without notice): the survivors agree among themselves who is gone and
        form a ring of their own at once, in the same generation, instead of waiting for the control plane's round
        trip; then the control plane is told (it fences with a new generation and replaces the lost instance; its
        Reconfigure naming exactly this ring is taken without a second re-form, see ``adoptable``).

        The state was already rolled back to the last commit; the survivors' states are synced next (they may be a
        commit apart). Returns None when the ring cannot heal (not armed, no majority checked in, this worker was
        left out, a heal store or a peer failed meanwhile): the worker then waits for the control plane, as before.
        """
        membership, point = self.membership, self._heal
        self._heal = None
        if membership is None or point is None:
            return None
        began = time.monotonic()
        self._close_ring()
        found = self._agree_survivors(membership, point)
        if found is None:
            return None
        index, members = found
        rank = members.index(membership.rank)
        try:
            dist.init_process_group(
                _process_group_backend(),
                store=dist.PrefixStore("heal/ring", point.stores[index]),
                rank=rank,
                world_size=len(members),
                timeout=timedelta(seconds=self._config.timeout_s),
            )
        except (RuntimeError, TimeoutError, ConnectionError) as e:
            log.warning("generation %d: the survivors' ring did not form (%s)", membership.generation, e)
            leave_group()
            return None
        self.membership = replace(
            membership,
            rank=rank,
            world_size=len(members),
            checkpoint=None,  # the survivors keep what they hold; never a restore from S3 here
            instances=tuple(membership.instances[r] for r in members) if membership.instances else (),
        )
        self._place = (rank, len(members))
        self.backend = select_backend(
            list(self._config.backends), wire_dtype=_WIRE[self._config.wire], instances=self.membership.instance_ranks()
        )
        self._self_formed = True
        self.failures += 1
        if self._link.connected:
            # Told afterwards, without waiting for the broker: the ring trains on meanwhile.
            self._link.tell(self._failure_report(membership, error))
        try:
            self._arm_heal()
        except CollectiveError as e:
            log.warning("generation %d: the survivors' ring failed while arming (%s)", membership.generation, e)
            self._close_ring()
            self.membership = membership
            return None
        lost = tuple(r for r in range(membership.world_size) if r not in members)
        return Healed(membership.generation, lost, len(members), rank, time.monotonic() - began)

    # -- a newer generation, at a step boundary ----------------------------------------------------------------------

    def adoptable(self, membership: Membership) -> Reconfigure | None:
        """The newest Reconfigure when it names exactly the ring its survivors formed (same members, same ranks, no
        checkpoint to restore): the control plane's fencing of a heal. The ring then takes its generation as it is,
        instead of re-forming into the very same ring."""
        if not self._self_formed or not self.discovery.newer(membership.generation):  # (newer() reads a file anew)
            return None
        latest = self.commands.latest if self.commands is not None else None
        return latest if latest is not None and self._names_this_ring(membership, latest) else None

    def _names_this_ring(self, membership: Membership, command: Reconfigure) -> bool:
        if not self._self_formed or command.generation <= membership.generation:
            return False
        if command.checkpoint is not None or not membership.instances:
            return False
        return command.process_instances() == membership.instances

    def adopt(self, command: Reconfigure, membership: Membership) -> None:
        """Takes ``command``'s generation for the ring as it is (every rank agreed on it at the step boundary)."""
        adopted = Membership.from_reconfigure(command, self._config.instance_id, self._config.local_rank)
        assert adopted is not None and adopted.rank == membership.rank
        self.membership = adopted
        self.generation = max(self.generation, adopted.generation)
        self._place = (adopted.rank, adopted.world_size)
        self._self_formed = False
        log.info(
            "generation %d names the ring its survivors formed (world %d) at step %d: taken as it is, no re-form",
            adopted.generation,
            adopted.world_size,
            self._progress.step,
        )

    def next_generation_ready(self, membership: Membership) -> bool:
        """Whether the ring should leave for the newest generation at this boundary.

        A generation that only removes members (a loss, a worker left) is taken at once. One that adds workers is
        taken only once they are ready, that is waiting at its rendezvous with the job's script loaded (a
        replacement still booting, importing torch or loading its data would otherwise stall the whole ring):
        until then the ring trains on. The new generation's rank 0 serves its rendezvous from the moment it hears
        of it, so the newcomers can arrive; the current ring's rank 0 counts them there, and the step-boundary
        flags carry its verdict to every rank.
        """
        if not self.discovery.newer(membership.generation):
            return False
        latest = self.commands.latest if self.commands is not None else None
        if latest is None or not membership.instances:
            return True
        if self._names_this_ring(membership, latest):
            return False  # arrived since adoptable looked: the ring takes it as it is at the next boundary
        mine = latest.ranks.get(self._config.instance_id)
        if mine is None:
            return True  # left out (a discovery without the members' names): leave now
        # Processes, not instances: the newcomers' every slot arrives at the rendezvous.
        joining = sum(1 for instance in latest.process_instances() if instance not in membership.instances)
        if mine == 0:
            self._serve_rendezvous(latest)
        if joining == 0:
            return True
        if membership.rank != 0:
            return False
        return self._arrived(latest) >= joining

    def _superseded(self, membership: Membership, joining_since: float) -> bool:
        """Whether a newer generation makes joining ``membership`` pointless: at once when it drops some of its
        members. One that only adds workers lets this ring form first (it trains, and takes the newer one at a step
        boundary once the newcomers are ready, see ``next_generation_ready``) — for ``SUPERSET_PATIENCE_S``: a
        member that learned of the newer generation before joining this one went straight to it, and waiting for
        it here would wait for nobody."""
        if not self.discovery.newer(membership.generation):
            return False
        latest = self.commands.latest if self.commands is not None else None
        if latest is None or not membership.instances:
            return True
        if not set(membership.instances) <= set(latest.ranks):
            return True
        return time.monotonic() - joining_since > SUPERSET_PATIENCE_S

    def left_out(self, membership: Membership) -> bool:
        """Whether a newer generation, named with its members, leaves this worker out."""
        latest = self.commands.latest if self.commands is not None else None
        return (
            latest is not None
            and bool(membership.instances)
            and latest.generation > membership.generation
            and self._config.instance_id not in latest.ranks
        )

    def _serve_rendezvous(self, command: Reconfigure) -> None:
        """Slot 0 of the next generation's first instance serves its rendezvous (its rank 0)."""
        if self._config.local_rank != 0 or (self._served is not None and self._served[0] == command.generation):
            return
        membership = Membership.from_reconfigure(command, self._config.instance_id, self._config.local_rank)
        try:
            store = rendezvous_store(command.rendezvous, serve=True, timeout_s=2.0)
        except (RuntimeError, ConnectionError) as e:  # the port is taken: joining will say so
            log.warning("cannot serve the rendezvous of generation %d yet: %s", command.generation, e)
            return
        if membership is not None:  # newcomers arrive only at a store that names their ring
            store.set("ring", ring_identity(membership))
        self._served = (command.generation, store)

    def _arrived(self, command: Reconfigure) -> int:
        """How many members already wait at ``command``'s rendezvous (0 while it does not answer)."""
        try:
            if self._served is not None and self._served[0] == command.generation:
                return int(self._served[1].add("arrived", 0))
            if self._probe is None or self._probe[0] != command.generation:
                self._probe = (command.generation, rendezvous_store(command.rendezvous, serve=False, timeout_s=0.2))
            return int(self._probe[1].add("arrived", 0))
        except (RuntimeError, ConnectionError):
            return 0

    # -- ranks leaving with notice -----------------------------------------------------------------------------------

    def _survivors_group(self, survivors: list[int], leaving: bool) -> dist.ProcessGroup | None:
        """The survivors' sub-group, formed among the survivors alone (None on a leaver, which takes no part in it):
        ``shrink``'s one collective that only some ranks join."""
        to_global = (lambda r: dist.get_global_rank(self.group, r)) if self.group is not None else (lambda r: r)
        members = [to_global(r) for r in survivors]
        group = None
        if not leaving:
            # A peer's timeout, not torch's default 30 minutes: a survivor gone meanwhile fails this, it never hangs.
            timeout = timedelta(seconds=self._config.timeout_s)
            group = collective(lambda: dist.new_group(members, timeout=timeout, use_local_synchronization=True))
        return group

    def _leavers(self, membership: Membership) -> set[int]:
        """The ranks that leave at this boundary (one collective): those with notice, and every rank of their
        instances."""
        bits = torch.zeros(membership.world_size)
        bits[membership.rank] = float(self._flags.leaving)
        collective(lambda: dist.all_reduce(bits, group=self.group))
        noticed = [r for r, leaving in enumerate(bits.tolist()) if leaving]
        return {s for r in noticed for s in membership.same_instance(r)}

    def shrink(self, membership: Membership) -> bool:
        """Some ranks leave with notice: the others form a ring of their own at this very step boundary and go on
        training (a sub-group of the generation's group, formed among themselves in milliseconds) while the
        leavers exit; nobody waits for the control plane or a replacement. Returns False when every rank leaves.

        An instance leaves with all its slots: the notice reaches its agent (slot 0) alone, and its other slots leave
        with it. A leaver raises Stopped once the survivors' ring exists (its state is theirs: nothing of it is lost).
        """
        step = self._progress.step
        leavers = self._leavers(membership)
        survivors = [r for r in range(membership.world_size) if r not in leavers]
        if not survivors:
            return False
        leaving = membership.rank in leavers
        group = self._survivors_group(survivors, leaving)
        # The leavers stay until the survivors' ring exists: rank 0 of the generation serves its store.
        collective(lambda: dist.barrier(group=self.group))
        if leaving:
            log.info("a rank leaves after step %d: the %d others train on", step, len(survivors))
            self._events.emit(RankLeft, generation=membership.generation, reached=step)
            raise Stopped("leaving: notice given; the others train on without this worker")
        if self.backend is not None:
            self.backend.close()
        self.group = group
        self.membership = replace(
            membership,
            rank=survivors.index(membership.rank),
            world_size=len(survivors),
            instances=tuple(membership.instances[r] for r in survivors) if membership.instances else (),
        )
        self._place = (self.membership.rank, self.membership.world_size)
        self.backend = select_backend(list(self._config.backends), group=group, wire_dtype=_WIRE[self._config.wire])
        self._arm_heal()
        log.info(
            "generation %d: shrank to %d at step %d without the leaving rank(s) %s; training on as rank %d",
            membership.generation,
            len(survivors),
            step,
            [r for r in range(membership.world_size) if r not in survivors],
            self.membership.rank,
        )
        self._events.emit(RingShrank, generation=membership.generation, step=step, world=len(survivors))
        return True
