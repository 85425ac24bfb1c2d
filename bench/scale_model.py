"""A scale model of node_recovery: a pool reclamation through AWS's published limits, in simulated time.

A spot pool is reclaimed: ``--reclaim`` (20 %) of a fleet of ``--workers``-worker jobs gets its two-minute warning
within ``--arrival-s`` seconds, as EventBridge delivers them into RecoveryQueue. Nothing talks to AWS: a
discrete-event simulation runs the queue, the SQS event source's pollers (5 at first, up to 300 more a minute),
Lambda's concurrency, the execution environments' cold starts and CPU share, and DynamoDB's tables, indexes and
partitions as token buckets, while every warning goes through the REAL recovery service: node_recovery's call,
``RecoveryService.on_node_event`` (ringfleet/recovery/service.py), built as ``ringfleet.bootstrap`` builds it but on
simulated ports (``SimJobs``, ``SimNodes``, ``SimPublisher``, the clock, ``put_events`` and ``sleep``) that answer
as DynamoDbJobRepository, DynamoDbNodeRepository and the broker would, each call taking its round trip and its
capacity units in simulated time, with the items the real adapter writes (``job_to_item`` / ``node_to_item``, for
their sizes and index keys). The service's own code runs in a thread per record that hands control back to the
simulation at every call (``Baton``), so the calls and their order are the service's, never a copy of them; for a
notice they are:

1. GetItem of the node, GetItem of the job (consistent reads);
2. ``plan_recovery`` from the job and the notified node alone (a Query of the job's nodes only when the notice
   changes nothing: a duplicate);
3. TransactWriteItems: the job's update, conditional on the generation and revision it was decided from, and the
   node's put. A lost race: ConditionalCheckFailed returns the stored job (ReturnValuesOnConditionCheckFailure),
   which the service decides again from after its full-jitter pause; a transaction that finds another one in
   progress on the job (TransactionConflict) returns no item, so the job is read again;
4. the CheckpointNow published (the first notice of a job only), then the outbox cleared (UpdateItem, conditional
   on the revision just written: it too can lose to a concurrent writer and retry from the stored job; a clear
   that fails leaves the command for the job's next reader to publish again, under the same message id);
5. PutEvents ``Capacity Wanted`` when the notice started the job's recovery.

Throttling is DynamoDB's: a request a partition (or the table, or an index partition its write propagates to)
has no capacity for is refused, boto3's standard mode retries it twice after rand * 1 s and rand * 2 s, and a
request refused three times fails the record, which SQS delivers again after the queue's visibility timeout.

Then, untimed, every affected job gets its emergency CheckpointCompleted and one replacement per reclaimed worker
through the same service on free ports, and the model checks that each ends exactly one generation later with
exactly one Reconfigure and one CheckpointNow (one message id: a command published again from an outbox is counted
apart, as republished).

Prints, per fleet size: seconds from the first warning until the last affected job's CheckpointNow is published,
AWS calls per warning by kind, conflicts, the busiest DynamoDB partition's peak second against its limit, and what
the last job waited for; then the largest fleet for which every CheckpointNow goes out within 30 s (the burst
bench's target, leaving 90 s of the notice to the checkpoint) and within the 120 s notice, with the limit that
binds beyond it. ``--json`` prints the same as one JSON object.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import random
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Generator, Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from ringfleet.adapters.dynamodb import job_to_item, node_to_item  # noqa: E402
from ringfleet.contracts import JobSubmitted, parse_cloud_event  # noqa: E402
from ringfleet.core.jobs import Incident, Job, JobState  # noqa: E402
from ringfleet.core.nodes import Node, NodeState  # noqa: E402
from ringfleet.core.ports import Saved  # noqa: E402
from ringfleet.recovery.plan import CheckpointTaken  # noqa: E402
from ringfleet.recovery.service import RecoveryService, StaleDecision  # noqa: E402

if TYPE_CHECKING:
    from ringfleet.contracts import CheckpointNow, NodeEvent, Reconfigure, Stop
    from ringfleet.core.jobs import DurableCheckpoint
    from ringfleet.core.nodes import LifecycleHook

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOTICE_S = 120.0
TARGET_S = 30.0
#: Simulated seconds after which a scenario is given up (a record failing over and over).
HORIZON_S = 900.0
SIZES = (1_000, 10_000, 50_000, 100_000)
KB = 1024

# -- parameters -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Params:
    """AWS's published limits and the measured costs the model runs under (``--help`` says where each comes from)."""

    account_concurrency: int = 1000
    esm_initial: int = 5
    esm_ramp_per_min: int = 300
    esm_max: int = 1000
    maximum_concurrency: int = 0
    lambda_scale_per_10s: int = 1000
    batch_size: int = 10
    batch_overhead_ms: float = 20.0
    init_ms: float = 1500.0
    memory_mb: int = 256
    cpu_ms: float = 6.6
    ddb_ms: float = 5.0
    transact_ms: float = 10.0
    txn_hold_ms: float = 4.0
    publish_ms: float = 5.0
    put_events_ms: float = 20.0
    partition_wcu: float = 1000.0
    partition_rcu: float = 3000.0
    table_partitions: int = 4
    table_wru: float = 40_000.0
    table_rru: float = 40_000.0
    sdk_attempts: int = 3
    visibility_s: float = 60.0
    max_receives: int = 3
    save_attempts: int = 8
    backoff_base_ms: float = 10.0
    backoff_cap_ms: float = 320.0
    reclaim: float = 0.2
    workers: int = 10
    placement: str = "packed"
    tenants: int = 1
    history: int = 10
    arrival_s: float = 2.0
    duplicates: float = 0.0
    seed: int = 1

    @property
    def concurrency_cap(self) -> int:
        caps = [self.account_concurrency, self.esm_max]
        if self.maximum_concurrency:
            caps.append(self.maximum_concurrency)
        return max(1, min(caps))

    @property
    def cpu_share(self) -> float:
        """Lambda gives a function one vCPU at 1,769 MB and a proportional share below."""
        return min(1.0, self.memory_mb / 1769)


HELP: dict[str, str] = {
    "account_concurrency": "Lambda concurrent executions of the account (default quota 1,000 per Region; "
    "docs.aws.amazon.com/lambda/latest/dg/lambda-concurrency.html)",
    "esm_initial": "concurrent batches the SQS event source starts with (5; docs.aws.amazon.com/lambda/latest/dg/"
    "services-sqs-scaling.html)",
    "esm_ramp_per_min": "more concurrent batches the SQS event source adds per minute while messages wait "
    "(300; same page)",
    "esm_max": "most concurrent batches one SQS event source processes (1,000; same page)",
    "maximum_concurrency": "the event source's MaximumConcurrency (ScalingConfig, 2-1,000; 0: unset, as in "
    "template.yaml)",
    "lambda_scale_per_10s": "new execution environments per function every 10 s (1,000; docs.aws.amazon.com/lambda/"
    "latest/dg/scaling-behavior.html)",
    "batch_size": "records per invocation (BatchSize 10 in template.yaml, no batching window)",
    "batch_overhead_ms": "the pollers' ReceiveMessage + invoke + DeleteMessageBatch per batch (assumption)",
    "init_ms": "cold start of a new execution environment: imports, clients, broker connection (assumption: "
    "bench/cold_start.py measures the imports on a full core; 256 MB gets a seventh of one)",
    "memory_mb": "NodeRecoveryFunction's memory (256, template.yaml Globals): CPU share = memory / 1,769 MB "
    "(docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html)",
    "cpu_ms": "the handler's own CPU per warning on one full core (bench/recovery_burst.py: 6.3-7.0 ms; README)",
    "ddb_ms": "round trip of one GetItem / UpdateItem / Query in Region (DynamoDB's single-digit ms; p50 ~5 ms)",
    "transact_ms": "round trip of one TransactWriteItems (two-phase: about twice a single write; assumption)",
    "txn_hold_ms": "how long a transaction holds the job item: a second one meanwhile gets TransactionConflict "
    "(unpublished; assumption, 0 turns it off)",
    "publish_ms": "one broker publish with confirms (Amazon MQ for RabbitMQ in the same Region; assumption)",
    "put_events_ms": "one EventBridge PutEvents (assumption)",
    "partition_wcu": "write units per second of one partition, table or index (1,000; docs.aws.amazon.com/"
    "amazondynamodb/latest/developerguide/warm-throughput-scenarios.html)",
    "partition_rcu": "read units per second of one partition (3,000; same page)",
    "table_partitions": "partitions of the jobs and nodes tables: a new on-demand table's warm throughput is "
    "12,000 reads / 4,000 writes per second (same page), i.e. 4 partitions",
    "table_wru": "write request units per second of one on-demand table (40,000 default quota; docs.aws.amazon.com/"
    "amazondynamodb/latest/developerguide/ServiceQuotas.html)",
    "table_rru": "read request units per second of one on-demand table (40,000; same page)",
    "sdk_attempts": "boto3 attempts per call (standard mode, AWS_MAX_ATTEMPTS 3 in ringfleet/bootstrap.py; a "
    "throttle waits rand * 2**i s)",
    "visibility_s": "RecoveryQueue's visibility timeout: a failed record comes back after it (60, template.yaml)",
    "max_receives": "RecoveryQueue's maxReceiveCount before the DLQ (3, template.yaml)",
    "save_attempts": "conditional saves lost before giving up (MAX_ATTEMPTS 8, ringfleet/recovery/service.py)",
    "backoff_base_ms": "full-jitter pause after a lost race: up to base * 2**attempt (10 ms, recovery/service.py)",
    "backoff_cap_ms": "... at most this (320 ms, recovery/service.py)",
    "reclaim": "share of the fleet reclaimed at once: one pool of 1/reclaim equal pools (0.2)",
    "workers": "workers per job (10, as bench/recovery_burst.py)",
    "placement": "packed: each job in one pool (a reclaimed pool takes whole jobs, 10 warnings each); spread: each "
    "job's workers across the pools (every job loses reclaim * workers)",
    "tenants": "tenants owning the jobs (1: one organisation's fleet): the jobs table's by-tenant index has one "
    "partition key per tenant",
    "history": "incidents already on each job record (10): the job item's size, so its write units",
    "arrival_s": "the warnings arrive uniformly over this many seconds (EventBridge delivering a reclamation)",
    "duplicates": "share of the warnings delivered twice (EventBridge and SQS deliver at least once)",
    "seed": "random seed (arrival order, jitter)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(Params):
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        kind = type(default)
        choices = ("packed", "spread") if f.name == "placement" else None
        parser.add_argument(flag, type=kind, default=default, choices=choices, help=f"{HELP[f.name]} [{default}]")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help=f"fleet sizes [{SIZES}]")
    parser.add_argument(
        "--max-search",
        type=int,
        default=SIZES[-1],
        help=f"largest fleet the bound searches try (slow beyond: 200,000 nodes take ~20 s) [{SIZES[-1]}]",
    )
    parser.add_argument(
        "--ablate",
        action="store_true",
        help="at the first fleet beyond each bound, relax each limit alone x10 and report the times (slow)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    return parser


# -- the simulation engine --------------------------------------------------------------------------------------------

Process = Generator[float, None, Any]


class Sim:
    """Processes are generators yielding how long they wait; everything they touch is evaluated at ``now``."""

    def __init__(self, seed: int) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self._heap: list[tuple[float, int, Process]] = []
        self._seq = 0

    def start(self, process: Process, at: float | None = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (self.now if at is None else at, self._seq, process))

    def run(self, until: float, done: Callable[[], bool] = lambda: False) -> None:
        """Runs the processes until ``until`` seconds, or until ``done()`` (asked every thousand steps)."""
        steps = 0
        while self._heap and self._heap[0][0] <= until:
            steps += 1
            if steps % 1000 == 0 and done():
                return
            self.now, _, process = heapq.heappop(self._heap)
            try:
                delay = next(process)
            except StopIteration:
                continue
            self.start(process, self.now + max(0.0, delay))


#: A partition's limit is per second, enforced over short windows (DynamoDB publishes no burst for it): a bucket
#: holds a tenth of a second's units.
BURST_S = 0.1


class Bucket:
    """A token bucket of ``rate`` units per second holding BURST_S seconds' worth; records its busiest second."""

    def __init__(self, name: str, rate: float) -> None:
        self.name, self.rate = name, rate
        self.depth = rate * BURST_S
        self.tokens, self.at = self.depth, 0.0
        self.per_second: Counter[int] = Counter()
        self.throttled = 0
        self.requests = 0

    def has(self, now: float, units: float) -> bool:
        self.requests += 1
        self.tokens = min(self.depth, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return self.tokens >= min(units, self.depth)

    def take(self, now: float, units: float) -> None:
        self.tokens -= units
        self.per_second[int(now)] += math.ceil(units)


# -- the fleet, the tables and what each call costs ---------------------------------------------------------------


def item_size(item: dict[str, Any]) -> int:
    """DynamoDB's item size, near enough: attribute names plus their values as stored."""
    return sum(len(k) + _value_size(v) for k, v in item.items() if v is not None)


def _value_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int):
        return len(str(value))
    return len(json.dumps(value))


_INCIDENTS: dict[int, tuple[Incident, int]] = {}


def incident_size(incident: Incident) -> int:
    """The length of one incident's JSON as ``job_to_item`` writes it, once per incident (versions share them)."""
    cached = _INCIDENTS.get(id(incident))
    if cached is None or cached[0] is not incident:
        cached = _INCIDENTS[id(incident)] = (incident, len(json.dumps({**vars(incident), "at": _when(incident.at)})))
    return cached[1]


def write_units(item: dict[str, Any]) -> int:
    return max(1, math.ceil(item_size(item) / KB))


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_SIZES: dict[int, tuple[Job, dict[str, Any], int]] = {}


def job_item(job: Job) -> tuple[dict[str, Any], int]:
    """``job_item_uncached`` once per job version (a version is never changed, only replaced)."""
    cached = _SIZES.get(id(job))
    if cached is None or cached[0] is not job:
        if len(_SIZES) > 200_000:
            _SIZES.clear()
            _INCIDENTS.clear()
        cached = _SIZES[id(job)] = (job, *job_item_uncached(job))
    return cached[1], cached[2]


def job_item_uncached(job: Job) -> tuple[dict[str, Any], int]:
    """The item ``job_to_item`` writes (its keys, for the indexes) and its size.

    ``job_to_item`` serializes the incidents and the recovery with ``dataclasses.asdict`` (a deep copy: ~4 ms for a
    job with a history), too slow for 100,000 warnings; they are serialized here the same way from their fields
    (tests/unit/test_scale_model.py checks the sizes agree), the rest by ``job_to_item`` itself.
    """
    item = job_to_item(replace(job, incidents=(), recovery=None))
    incidents = 2 + sum(incident_size(i) for i in job.incidents) + 2 * max(0, len(job.incidents) - 1)
    size = item_size(item) - len(item["incidents"]) + incidents
    recovery = job.recovery
    if recovery is not None:
        text = json.dumps(
            {
                **vars(recovery),
                "started_at": _when(recovery.started_at),
                "deadline": _when(recovery.deadline),
                "leaving": list(recovery.leaving),
                "lost": list(recovery.lost),
            }
        )
        size += len("recovery") + len(text)
    return item, size


def job_units(job: Job, per: int = KB) -> int:
    return max(1, math.ceil(job_item(job)[1] / per))


@dataclass
class Record:
    instance_id: str
    job_id: str
    arrived: float
    picked: float | None = None
    receives: int = 0
    #: Seconds waited, by cause (throttled by which partition, lost races, redelivery ...).
    waits: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))


@dataclass
class Tables:
    """The jobs and nodes tables as DynamoDB holds them, with every partition and index partition as a bucket."""

    params: Params
    jobs: dict[str, Job] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    by_job: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    locked_until: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, Bucket] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)
    throttles: Counter[str] = field(default_factory=Counter)

    def bucket(self, name: str, rate: float) -> Bucket:
        found = self.buckets.get(name)
        if found is None:
            found = self.buckets[name] = Bucket(name, rate)
        return found

    def partition(self, table: str, key: str, *, read: bool = False) -> Bucket:
        p = self.params
        number = zlib.crc32(key.encode()) % p.table_partitions
        kind = "read" if read else "write"
        return self.bucket(f"{table} table, partition {number} ({kind})", p.partition_rcu if read else p.partition_wcu)

    def whole(self, table: str, *, read: bool = False) -> Bucket:
        p = self.params
        return self.bucket(
            f"{table} table as a whole ({'read' if read else 'write'})", p.table_rru if read else p.table_wru
        )

    def index(self, table: str, index: str, key: str) -> Bucket:
        return self.bucket(f"{table} index {index}, key {key} (write)", self.params.partition_wcu)


def job_write_buckets(tables: Tables, item: dict[str, Any], units: int, factor: int) -> tuple[Charges, Charges]:
    """Where a write of the job item lands: its partition and the table (``factor`` 2 in a transaction), and, once
    it went through, both indexes (projection ALL: the whole item again, one unit per KB)."""
    base: Charges = [(tables.partition("jobs", item["job_id"]), units * factor), (tables.whole("jobs"), units * factor)]
    indexes: Charges = [(tables.index("jobs", "by-tenant", item["tenant"]), units)]
    if "active_shard" in item:
        indexes.append((tables.index("jobs", "active", item["active_shard"]), units))
    return base, indexes


def node_write_buckets(tables: Tables, before: dict[str, Any], after: dict[str, Any]) -> tuple[Charges, Charges]:
    """The node's put in a transaction, then its indexes: by-job, and by-silence (a LEAVING node leaves it)."""
    units = write_units(after)
    base: Charges = [(tables.partition("nodes", after["instance_id"]), 2 * units), (tables.whole("nodes"), 2 * units)]
    indexes: Charges = [(tables.index("nodes", "by-job", after["job_id"]), units)]
    shard = before.get("watch_shard") or after.get("watch_shard")
    if shard is not None:
        indexes.append((tables.index("nodes", "by-silence", shard), 1 if "watch_shard" not in after else units))
    return base, indexes


Charges = list[tuple[Bucket, float]]


def short_of(now: float, charges: Charges) -> Bucket | None:
    """The first bucket without the units a request needs (DynamoDB throttles it), or None."""
    for bucket, units in charges:
        if not bucket.has(now, units):
            bucket.throttled += 1
            return bucket
    return None


def take(now: float, charges: Charges) -> None:
    for bucket, units in charges:
        bucket.take(now, units)


def admit(now: float, charges: Charges) -> Bucket | None:
    """Takes the units from every bucket, or none of them: returns the first bucket short of them (a throttle)."""
    throttled = short_of(now, charges)
    if throttled is None:
        take(now, charges)
    return throttled


class Throttled(Exception):
    """A call refused sdk_attempts times: the record fails and comes back after the visibility timeout."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)
        self.bucket = bucket


def call(run: Run, kind: str, latency_ms: float, at_server: Callable[[], tuple[Bucket | None, Any]]) -> Any:
    """One AWS call as boto3 makes it: half the round trip there, ``at_server`` evaluated, half back; a throttle
    retried after boto3's standard-mode pause, a third one raised."""
    tables = run.tables
    tables.calls[kind] += 1
    attempt = 0
    while True:
        run.wait(latency_ms / 2000)
        throttled, result = at_server()
        run.wait(latency_ms / 2000)
        if throttled is None:
            return result
        tables.throttles[kind] += 1
        attempt += 1
        if attempt >= tables.params.sdk_attempts:
            raise Throttled(throttled.name)
        pause = run.sim.rng.random() * min(2.0 ** (attempt - 1), 20.0)
        run.w.waits[f"throttled: {throttled.name}"] += pause
        run.wait(pause)


# -- the recovery service's own code, on ports that take simulated time ----------------------------------------------


@dataclass
class Outcome:
    """What the burst did, across every warning."""

    published: dict[str, float] = field(default_factory=dict)
    #: Per job, the CheckpointNow commands published (their message ids: one decision, one id).
    checkpoint_now: defaultdict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    #: Commands published again under the same message id: left in an outbox by a writer whose clear failed (a
    #: throttled UpdateItem), published by the job's next reader (``Outbox.flush``); the workers drop the repeat.
    republished: int = 0
    #: plan_recovery runs: one per job read or lost race the service decides from, one more when it reads the job's
    #: nodes (a notice that changes nothing or re-forms the ring), as RecoveryService._decide does.
    decisions: int = 0
    conflicts: int = 0
    transaction_conflicts: int = 0
    handled: int = 0
    failed_records: int = 0
    dead_letters: int = 0
    #: Per job, what the record whose CheckpointNow went out had waited for by then: arrival and seconds by cause.
    critical: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)


class Abandoned(BaseException):
    """The simulation stopped before this record's handling ended: its thread unwinds (caught by nothing)."""


class Baton:
    """Runs ``body(wait)`` in a thread of its own as one Sim process: ``wait(seconds)`` hands control back to the
    simulation until that much simulated time has passed.

    The thread lets the recovery service's own synchronous code run unchanged on ports that take simulated time;
    only one thread runs at a time (the simulation's, or the one body it handed the baton to), so a run is as
    deterministic as the generators it sits among.
    """

    def __init__(self, body: Callable[[Callable[[float], None]], object]) -> None:
        self._body = body
        # Locks as binary semaphores (released by the other thread): the cheapest hand-over there is.
        self._go, self._back = threading.Lock(), threading.Lock()
        self._go.acquire()
        self._back.acquire()
        self._delay = 0.0
        self._finished = self._abandoned = False
        self._error: BaseException | None = None

    def _run(self) -> None:
        self._go.acquire()
        try:
            if not self._abandoned:
                self._body(self._wait)
        except Abandoned:
            pass
        except BaseException as exc:
            self._error = exc
        self._finished = True
        self._back.release()

    def _wait(self, seconds: float) -> None:
        self._delay = seconds
        self._back.release()
        self._go.acquire()
        if self._abandoned:
            raise Abandoned

    def process(self) -> Process:
        threading.Thread(target=self._run, name="scale-model-record", daemon=True).start()
        try:
            while True:
                self._go.release()
                self._back.acquire()
                if self._finished:
                    break
                yield self._delay
        finally:
            if not self._finished:  # closed mid-way (the simulation stopped): let the thread unwind, then go on
                self._abandoned = True
                self._go.release()
                self._back.acquire()
        if self._error is not None:
            raise self._error


@dataclass
class Run:
    """One record's handling: where it runs, what it counts, and how its thread lets simulated time pass."""

    sim: Sim
    tables: Tables
    out: Outcome
    w: Record
    wait: Callable[[float], None]


class SimClock:
    """The simulation's time as the service's clock; without a simulation, a time that stands still at ``at``."""

    def __init__(self, sim: Sim | None, at: datetime = T0) -> None:
        self.sim, self.at = sim, at

    def now(self) -> datetime:
        return self.at if self.sim is None else T0 + timedelta(seconds=self.sim.now)


class SimJobs:
    """The jobs table as DynamoDbJobRepository uses it (a JobRepository): consistent reads, the conditional save on
    generation and revision (with the nodes in one TransactWriteItems, or an UpdateItem alone), the stored job
    returned by a failed condition, TransactionConflict while another transaction holds the job. With a ``run``
    every call costs its round trip and capacity and may be throttled; without, it is free (the untimed
    follow-up)."""

    def __init__(self, tables: Tables, run: Run | None = None, clock: SimClock | None = None) -> None:
        self.tables, self.run = tables, run
        self.clock = clock or SimClock(run.sim if run else None)

    def get(self, job_id: str) -> Job | None:
        run = self.run
        if run is None:
            return self.tables.jobs.get(job_id)

        def at_server() -> tuple[Bucket | None, Job | None]:
            job = self.tables.jobs.get(job_id)
            if job is None:
                return None, None
            units = job_units(job, 4 * KB)
            charges: Charges = [
                (self.tables.partition("jobs", job_id, read=True), units),
                (self.tables.whole("jobs", read=True), units),
            ]
            return admit(run.sim.now, charges), job

        job = call(run, "DynamoDB GetItem", self.tables.params.ddb_ms, at_server)
        run.out.decisions += job is not None
        return cast("Job | None", job)

    def save(self, job: Job, *, decided_from: Job, nodes: Sequence[Node] = ()) -> Saved:
        # Stamped as the adapter stamps it (its clock, before the call).
        after = job.saved(self.clock.now()) if job.revision == decided_from.revision else job
        if self.run is None:
            return self._write(after, decided_from, nodes)
        if nodes:
            return self._transact(self.run, after, decided_from, nodes)
        return self._update(self.run, after, decided_from)

    def _write(self, after: Job, decided_from: Job, nodes: Sequence[Node]) -> Saved:
        stored = self.tables.jobs[after.job_id]
        if (stored.generation, stored.revision) != (decided_from.generation, decided_from.revision):
            return Saved(False, current=stored)
        # The durable checkpoint is never written by a save (record_durable_checkpoint's alone).
        self.tables.jobs[after.job_id] = replace(after, durable_checkpoint=stored.durable_checkpoint)
        for node in nodes:
            self.tables.nodes[node.instance_id] = node
        return Saved(True, nodes_written=bool(nodes))

    def _transact(self, run: Run, after: Job, decided_from: Job, nodes: Sequence[Node]) -> Saved:
        """The job's conditional update and the nodes' puts in one TransactWriteItems."""
        tables, p = self.tables, self.tables.params

        def at_server() -> tuple[Bucket | None, Saved | None]:
            stored = tables.jobs[after.job_id]
            units = max(job_units(stored), job_units(after))  # an update is charged the larger of the two
            job_base, job_indexes = job_write_buckets(tables, job_item(after)[0], units, 2)
            base, indexes = list(job_base), list(job_indexes)
            for node in nodes:
                node_base, node_indexes = node_write_buckets(
                    tables, node_to_item(tables.nodes[node.instance_id]), node_to_item(node)
                )
                base += node_base
                indexes += node_indexes
            throttled = short_of(run.sim.now, base + indexes)
            if throttled is not None:
                return throttled, None
            if tables.locked_until.get(after.job_id, -1.0) > run.sim.now:
                return None, Saved(False)  # TransactionConflict: no item returned
            if (stored.generation, stored.revision) != (decided_from.generation, decided_from.revision):
                take(run.sim.now, base)  # a cancelled transaction is charged, writes no index
                return None, Saved(False, current=stored)
            take(run.sim.now, base + indexes)
            tables.locked_until[after.job_id] = run.sim.now + p.txn_hold_ms / 1000
            return None, self._write(after, decided_from, nodes)

        saved = cast(Saved, call(run, "DynamoDB TransactWriteItems", p.transact_ms, at_server))
        if not saved:
            run.out.conflicts += 1
            run.out.transaction_conflicts += saved.current is None
            run.out.decisions += saved.current is not None
        return saved

    def _update(self, run: Run, after: Job, decided_from: Job) -> Saved:
        """A conditional UpdateItem of the job alone (the outbox cleared)."""
        tables = self.tables

        def at_server() -> tuple[Bucket | None, Saved | None]:
            stored = tables.jobs[after.job_id]
            units = max(job_units(stored), job_units(after))
            base, indexes = job_write_buckets(tables, job_item(after)[0], units, 1)
            throttled = short_of(run.sim.now, base + indexes)
            if throttled is not None:
                return throttled, None
            if (stored.generation, stored.revision) != (decided_from.generation, decided_from.revision):
                take(run.sim.now, base)  # a failed conditional write is charged
                return None, Saved(False, current=stored)
            take(run.sim.now, base + indexes)
            return None, self._write(after, decided_from, ())

        return cast(Saved, call(run, "DynamoDB UpdateItem", tables.params.ddb_ms, at_server))

    def create(self, job: Job) -> bool:
        raise NotImplementedError("recovery never creates a job")

    def record_durable_checkpoint(self, job_id: str, checkpoint: DurableCheckpoint) -> bool:
        raise NotImplementedError("the backup records durable checkpoints, not recovery")

    def list_by_tenant(self, tenant: str) -> list[Job]:
        raise NotImplementedError("recovery never lists a tenant's jobs")

    def list_active(self) -> list[Job]:
        raise NotImplementedError("recovery never lists the active jobs")


class SimNodes:
    """The nodes table as DynamoDbNodeRepository uses it (a NodeRepository), timed like SimJobs."""

    def __init__(self, tables: Tables, run: Run | None = None) -> None:
        self.tables, self.run = tables, run

    def get(self, instance_id: str) -> Node | None:
        run, tables = self.run, self.tables
        if run is None:
            return tables.nodes.get(instance_id)

        def at_server() -> tuple[Bucket | None, Node | None]:
            charges: Charges = [
                (tables.partition("nodes", instance_id, read=True), 1),
                (tables.whole("nodes", read=True), 1),
            ]
            return admit(run.sim.now, charges), tables.nodes.get(instance_id)

        return cast("Node | None", call(run, "DynamoDB GetItem", tables.params.ddb_ms, at_server))

    def list_by_job(self, job_id: str) -> list[Node]:
        run, tables = self.run, self.tables
        nodes = [tables.nodes[i] for i in sorted(tables.by_job[job_id])]
        if run is None:
            return nodes
        # An index read, eventually consistent: half a unit per 4 KB, never the limit here.
        found = call(run, "DynamoDB Query", tables.params.ddb_ms, lambda: (None, nodes))
        run.out.decisions += 1  # the service decides again from every node of the job
        return cast("list[Node]", found)

    def put(self, node: Node) -> None:
        run, tables = self.run, self.tables
        if run is None:
            tables.nodes[node.instance_id] = node
            return

        def at_server() -> tuple[Bucket | None, None]:
            base, indexes = node_write_buckets(tables, node_to_item(tables.nodes[node.instance_id]), node_to_item(node))
            throttled = admit(run.sim.now, [(b, units / 2) for b, units in base] + indexes)  # not transactional
            if throttled is None:
                tables.nodes[node.instance_id] = node
            return throttled, None

        call(run, "DynamoDB PutItem", tables.params.ddb_ms, at_server)

    def place(self, node: Node, *, over: Node | None) -> bool:
        raise NotImplementedError("the fleet scaler places nodes, not recovery")

    def record_heartbeat(self, instance_id: str, *, job_id: str, generation: int, step: int, at: datetime) -> bool:
        raise NotImplementedError("no heartbeats in a reclamation burst")

    def list_silent(self, before: datetime) -> list[Node]:
        raise NotImplementedError("no sweep in a reclamation burst")


class SimPublisher:
    """The broker (a CommandPublisher): one publish with confirms per call; counts what went out."""

    def __init__(self, run: Run | None = None, sent: Counter[tuple[str, str]] | None = None) -> None:
        self.run = run
        self.sent: Counter[tuple[str, str]] = Counter() if sent is None else sent

    def publish(self, commands: Sequence[CheckpointNow | Reconfigure | Stop]) -> None:
        run = self.run
        if run is not None:
            run.tables.calls["broker publish"] += 1
            run.wait(run.tables.params.publish_ms / 1000)
        for command in commands:
            self.sent[command.job_id, command.type] += 1
            if run is not None and command.type == "CheckpointNow":
                out, w = run.out, run.w
                ids = out.checkpoint_now[command.job_id]
                out.republished += str(command.message_id) in ids
                ids.add(str(command.message_id))
                if w.job_id not in out.published:
                    out.published[w.job_id] = run.sim.now
                    out.critical[w.job_id] = (w.arrived, dict(w.waits))


class NoLifecycle:
    """Spot warnings carry no lifecycle hook, and no ring failure asks EC2 here (an InstanceLifecycle)."""

    def heartbeat_lifecycle_action(self, hook: LifecycleHook) -> None:
        raise NotImplementedError("a spot warning holds no lifecycle hook")

    def complete_lifecycle_action(self, hook: LifecycleHook, result: str = "CONTINUE") -> None:
        raise NotImplementedError("a spot warning holds no lifecycle hook")

    def not_running(self, instance_ids: Collection[str]) -> set[str]:
        return set()


def recovery_service(run: Run) -> RecoveryService:
    """The service node_recovery builds (``ringfleet.bootstrap.recovery_service``), on the simulated AWS."""
    clock = SimClock(run.sim)

    def put_events(entries: list[dict[str, Any]]) -> None:
        run.tables.calls["EventBridge PutEvents"] += 1
        run.wait(run.tables.params.put_events_ms / 1000)

    def sleep(seconds: float) -> None:
        run.w.waits["lost races (jittered pause)"] += seconds
        run.wait(seconds)

    return RecoveryService(
        jobs=SimJobs(run.tables, run, clock),
        nodes=SimNodes(run.tables, run),
        publisher=SimPublisher(run),
        fleet=NoLifecycle(),
        clock=clock,
        put_events=put_events,
        sleep=sleep,
    )


_WARNING: dict[str, Any] = json.loads((ROOT / "events" / "ec2_spot_interruption_warning.json").read_text())


def warning(w: Record) -> NodeEvent:
    """The spot interruption warning of ``w`` as EventBridge delivers it, parsed as node_recovery parses it."""
    at = T0 + timedelta(seconds=w.arrived)
    event = {
        **_WARNING,
        "id": f"warning-{w.instance_id}",
        "time": at.isoformat(),
        "resources": [f"arn:aws:ec2:us-east-1:123456789012:instance/{w.instance_id}"],
        "detail": {**_WARNING["detail"], "instance-id": w.instance_id},
    }
    return cast("NodeEvent", parse_cloud_event(event))


def handle(run: Run) -> None:
    """One warning through node_recovery's call: RecoveryService.on_node_event (see the module docstring)."""
    recovery_service(run).on_node_event(warning(run.w))


# -- the queue, the event source and Lambda -------------------------------------------------------------------------


@dataclass
class Queue:
    """RecoveryQueue: messages visible from a time on, taken in no particular order (a standard queue)."""

    visible: list[tuple[float, int, Record]] = field(default_factory=list)
    pending: int = 0
    seq: int = 0

    def put(self, w: Record, at: float) -> None:
        self.seq += 1
        heapq.heappush(self.visible, (at, self.seq, w))
        self.pending += 1

    def take(self, now: float, n: int) -> list[Record]:
        batch: list[Record] = []
        while self.visible and self.visible[0][0] <= now and len(batch) < n:
            batch.append(heapq.heappop(self.visible)[2])
        return batch

    def next_visible(self) -> float | None:
        return self.visible[0][0] if self.visible else None


@dataclass
class Fleet:
    sim: Sim
    tables: Tables
    queue: Queue
    out: Outcome
    #: Batches being processed now, and execution environments started and idle (warm).
    pollers: int = 0
    warm: int = 0
    cap_reached_at: float = math.inf


def run_record(fleet: Fleet, w: Record) -> Process:
    sim, p = fleet.sim, fleet.tables.params
    w.receives += 1
    try:
        yield p.cpu_ms / 1000 / p.cpu_share  # the handler's own CPU: parsing, deciding, serializing
        yield from Baton(lambda wait: handle(Run(sim, fleet.tables, fleet.out, w, wait))).process()
    except (Throttled, StaleDecision) as exc:
        # The record fails, as the handler raising would fail it: SQS delivers it again after the visibility timeout.
        why = f"throttling: {exc.bucket}" if isinstance(exc, Throttled) else "lost races"
        fleet.out.failed_records += 1
        if w.receives >= p.max_receives:
            fleet.out.dead_letters += 1
        else:
            w.waits[f"visibility timeout after {why}"] += p.visibility_s
            fleet.queue.put(w, sim.now + p.visibility_s)
    fleet.out.handled += 1
    fleet.queue.pending -= 1


def note_pickup(fleet: Fleet, batch: list[Record]) -> None:
    """What the batch waited for before a poller took it: the event source's ramp, then the concurrency cap."""
    now = fleet.sim.now
    for w in batch:
        if w.picked is None:
            w.picked = now
            ramp_end = min(now, fleet.cap_reached_at)
            w.waits["SQS event source ramp (+300/min)"] += max(0.0, ramp_end - w.arrived)
            w.waits["Lambda concurrency cap"] += max(0.0, now - max(w.arrived, fleet.cap_reached_at))


def poller(fleet: Fleet) -> Process:
    """One concurrent batch of the event source, on an execution environment of its own (a new one is cold on its
    first batch); it stops when nothing is visible (scale_out starts pollers again when messages wait)."""
    sim, p, queue = fleet.sim, fleet.tables.params, fleet.queue
    cold = fleet.warm == 0
    fleet.warm = max(0, fleet.warm - 1)
    while True:
        batch = queue.take(sim.now, p.batch_size)
        if not batch:
            fleet.pollers -= 1
            fleet.warm += 1
            return
        note_pickup(fleet, batch)
        if cold:
            cold = False
            for w in batch:
                w.waits["cold start"] += p.init_ms / 1000
            yield p.init_ms / 1000
        yield p.batch_overhead_ms / 1000
        for i, w in enumerate(batch):
            start = sim.now
            yield from run_record(fleet, w)
            for later in batch[i + 1 :]:
                later.waits["records ahead in the batch"] += sim.now - start


def scale_out(fleet: Fleet) -> Process:
    """The event source adds pollers while messages wait: esm_initial at once, then esm_ramp_per_min a minute (and
    no faster than Lambda's scaling rate), up to the concurrency cap."""
    p, sim, queue = fleet.tables.params, fleet.sim, fleet.queue
    rate = min(p.esm_ramp_per_min / 60, p.lambda_scale_per_10s / 10)
    cap, allowed = p.concurrency_cap, 0
    while queue.pending > 0:
        upcoming = queue.next_visible()
        if upcoming is None or upcoming > sim.now:  # nothing waits: records in flight, or coming back later
            yield 0.05 if upcoming is None else upcoming - sim.now
            continue
        allowed = min(cap, max(allowed + 1, p.esm_initial))
        if allowed >= cap:
            fleet.cap_reached_at = min(fleet.cap_reached_at, sim.now)
        while fleet.pollers < allowed:
            fleet.pollers += 1
            sim.start(poller(fleet))
        yield 1 / rate


# -- a scenario -------------------------------------------------------------------------------------------------------


def job_spec(job_id: str, tenant: str, workers: int) -> JobSubmitted:
    data = json.loads((ROOT / "events/messages/job_submitted.json").read_text())
    data.update(job_id=job_id, tenant=tenant, min_workers=1, max_workers=workers)
    return JobSubmitted.model_validate(data)


def seed_fleet(params: Params, size: int) -> tuple[Tables, list[tuple[str, str]]]:
    """The affected jobs and their nodes as stored before the reclamation, and the (instance, job) pairs of the
    reclaimed pool. The other jobs are never read or written by the burst: they are not built."""
    tables = Tables(params)
    pools = max(1, round(1 / params.reclaim))
    reclaimed: list[tuple[str, str]] = []
    template = job_spec("job", "tenant-0", params.workers)
    history = tuple(
        Incident(at=T0, cause="reconfigured", generation=1, detail=f"world {params.workers}")
        for _ in range(params.history)
    )
    for j in range(size // params.workers):
        pools_of = [j % pools if params.placement == "packed" else (j + r) % pools for r in range(params.workers)]
        if 0 not in pools_of:
            continue
        job_id, tenant = f"job-{j:06d}", f"tenant-{j % params.tenants}"
        spec = template.model_copy(update={"job_id": job_id, "tenant": tenant})
        members = {f"i-{j:09d}{r:04d}": r for r in range(params.workers)}
        job = Job(job_id, tenant, JobState.RUNNING, spec, generation=1, members=members, incidents=history)
        tables.jobs[job_id] = job.saved(T0)
        for instance, rank in members.items():
            tables.by_job[job_id].append(instance)
            host = f"10.{j % 250}.0.{rank}"
            tables.nodes[instance] = Node(instance, job_id, NodeState.ACTIVE, rank, 1, host, T0, 100, updated_at=T0)
            if pools_of[rank] == 0:
                reclaimed.append((instance, job_id))
    return tables, reclaimed


def follow_up(tables: Tables, affected: Iterable[str]) -> tuple[Counter[str], Counter[int]]:
    """Untimed: each job's emergency checkpoint, then one replacement per leaving worker, through the same service
    on free ports: the Reconfigures it publishes per job, and the generations the jobs end at."""
    sent: Counter[tuple[str, str]] = Counter()
    clock = SimClock(None, T0 + timedelta(seconds=HORIZON_S))
    service = RecoveryService(
        jobs=SimJobs(tables, clock=clock),
        nodes=SimNodes(tables),
        publisher=SimPublisher(sent=sent),
        fleet=NoLifecycle(),
        clock=clock,
        sleep=lambda seconds: None,
    )
    generations: Counter[int] = Counter()
    for job_id in affected:
        job = tables.jobs[job_id]
        leaving = job.recovery.leaving if job.recovery else ()
        service.apply(job_id, CheckpointTaken(job.generation, 500, clock.now(), emergency=True))
        for k, instance in enumerate(leaving):
            service.on_capacity_arrived(job_id, f"i-f{instance[2:]}", host=f"10.9.9.{k}")
        generations[tables.jobs[job_id].generation] += 1
    reconfigures = Counter({job_id: n for (job_id, kind), n in sent.items() if kind == "Reconfigure"})
    return reconfigures, generations


def busiest(tables: Tables) -> dict[str, Any]:
    """The bucket whose busiest second came nearest its limit (or went furthest over it, through its burst)."""
    rows = [(max(b.per_second.values()) / b.rate, b) for b in tables.buckets.values() if b.per_second]
    load, bucket = max(rows, key=lambda r: r[0])
    return {
        "name": bucket.name,
        "peak_units_per_s": max(bucket.per_second.values()),
        "limit_per_s": bucket.rate,
        "load": round(load, 3),
        "throttled_requests": bucket.throttled,
    }


def limiting(out: Outcome) -> dict[str, float]:
    """What the job whose CheckpointNow went out last waited for, seconds by cause (largest first)."""
    if not out.published:
        return {}
    last = max(out.published, key=out.published.__getitem__)
    arrived, waited = out.critical[last]
    waits = defaultdict(float, waited)
    waits["handling itself (CPU share, round trips)"] += out.published[last] - arrived - sum(waited.values())
    return {k: round(v, 3) for k, v in sorted(waits.items(), key=lambda kv: -kv[1]) if v > 0.0005}


def simulate(params: Params, size: int, bound: float | None = None) -> tuple[Tables, Outcome, list[Record], Fleet]:
    """The burst; with ``bound``, only until every affected job's CheckpointNow is out or ``bound`` seconds passed
    (enough to tell whether the fleet is served inside it, at a fraction of the cost)."""
    sim = Sim(params.seed)
    random.seed(params.seed)  # the service's own jittered backoff (ringfleet.core.outbox.backoff) draws from it
    tables, reclaimed = seed_fleet(params, size)
    fleet = Fleet(sim, tables, Queue(), Outcome())
    warnings = [Record(i, j, sim.rng.uniform(0, params.arrival_s)) for i, j in reclaimed]
    extra = [replace(w, waits=defaultdict(float)) for w in warnings if sim.rng.random() < params.duplicates]
    for w in warnings + extra:
        fleet.queue.put(w, w.arrived)
    sim.start(scale_out(fleet))
    if bound is None:
        sim.run(HORIZON_S)
    else:
        affected = len({w.job_id for w in warnings})
        sim.run(bound, done=lambda: len(fleet.out.published) == affected)
    return tables, fleet.out, warnings + extra, fleet


def run_scenario(params: Params, size: int) -> dict[str, Any]:
    """One reclamation of ``params.reclaim`` of a fleet of ``size`` nodes: what it cost and how long it took."""
    if size < params.workers:
        raise ValueError(f"a fleet of {size} nodes holds no job of {params.workers} workers")
    tables, out, warnings, fleet = simulate(params, size)
    affected = sorted({w.job_id for w in warnings})
    reconfigures, generations = follow_up(tables, affected)
    unpublished = [j for j in affected if j not in out.published]
    last = max(out.published.values()) if out.published and not unpublished else math.inf
    n = len(warnings)
    calls = {k: round(v / n, 3) for k, v in sorted(tables.calls.items())}
    return {
        "nodes": size,
        "jobs": size // params.workers,
        "affected_jobs": len(affected),
        "warnings": n,
        "last_checkpoint_now_s": round(last, 3),
        "median_checkpoint_now_s": round(sorted(out.published.values())[len(out.published) // 2], 3)
        if out.published
        else math.inf,
        "decisions": out.decisions,
        "calls_per_warning": calls,
        "aws_calls_per_warning": round(sum(v for k, v in tables.calls.items() if k != "broker publish") / n, 3),
        "throttled_requests": dict(tables.throttles),
        "conflicts": out.conflicts,
        "transaction_conflicts": out.transaction_conflicts,
        "failed_records": out.failed_records,
        "dead_letters": out.dead_letters,
        "peak_concurrency": fleet.warm + fleet.pollers,
        "busiest_partition": busiest(tables),
        "last_job_waited_for": limiting(out),
        "checkpoint_now_per_job": sorted(set(len(out.checkpoint_now[j]) for j in affected)),
        "republished_commands": out.republished,
        "reconfigure_per_job": sorted(set(reconfigures[j] for j in affected)),
        "generations": {str(g): c for g, c in sorted(generations.items())},
    }


# -- the largest fleet inside a bound ------------------------------------------------------------------------------


def limit_of(tables: Tables, out: Outcome) -> str:
    """The resource that binds: a DynamoDB partition that throttled more than 1 % of its requests (its throttles
    cost boto3's pauses and, three in a row, a minute of visibility timeout: more pollers only throttle more), or
    else what the last job waited for most."""
    worst = max(tables.buckets.values(), key=lambda b: b.throttled / max(1, b.requests), default=None)
    if worst is not None and worst.throttled > 0.01 * worst.requests:
        return f"DynamoDB {worst.name}: {worst.rate:,.0f} units/s ({worst.throttled:,} of {worst.requests:,} throttled)"
    return next(iter(limiting(out)), "none found")


def within(params: Params, size: int, bound: float) -> dict[str, Any]:
    """Whether every CheckpointNow of a reclamation in a fleet of ``size`` goes out within ``bound`` seconds, and
    what binds (the simulation stops once that is known)."""
    tables, out, warnings, _ = simulate(params, size, bound)
    affected = {w.job_id for w in warnings}
    last = max(out.published.values()) if len(out.published) == len(affected) else math.inf
    return {"nodes": size, "last_checkpoint_now_s": last, "limit": limit_of(tables, out)}


def largest_fleet(params: Params, bound: float, known: dict[int, float], max_nodes: int) -> dict[str, Any]:
    """The largest fleet up to ``max_nodes`` (to within 10 %) whose last CheckpointNow goes out within ``bound``
    seconds, and what binds in the smallest fleet found beyond it. ``known``: sizes already run, fully."""
    step = params.workers * max(1, round(1 / params.reclaim))
    probed: dict[int, dict[str, Any]] = {}

    def passes(size: int) -> bool:
        if size not in probed:
            probed[size] = within(params, size, bound)
        return probed[size]["last_checkpoint_now_s"] <= bound

    lo = max((s for s, t in known.items() if t <= bound), default=0)
    hi = min((s for s, t in known.items() if t > bound), default=0)
    while not hi and lo < max_nodes:
        candidate = min(max_nodes, max(step, lo * 2))
        lo, hi = (candidate, 0) if passes(candidate) else (lo, candidate)
    while hi and hi - lo > max(step, hi // 10):
        mid = max(step, (lo + hi) // 2 // step * step)
        lo, hi = (mid, hi) if passes(mid) else (lo, mid)
    if hi:
        passes(hi)
    return {
        "bound_s": bound,
        "largest_nodes": lo,
        "first_failing_nodes": hi or None,
        "searched_up_to": max_nodes,
        "limit": probed[hi]["limit"] if hi else f"none up to {max_nodes:,} nodes",
    }


#: What --ablate relaxes, one at a time, at the first fleet beyond a bound: the relaxation that helps most is the
#: limit (a check of limit_of's reading).
RELAXATIONS: dict[str, dict[str, Any]] = {
    "SQS event source scaling x10": {"esm_initial": 50, "esm_ramp_per_min": 3000},
    "Lambda concurrency x10": {"account_concurrency": 10_000, "esm_max": 10_000},
    "DynamoDB partition and table throughput x10": {
        "partition_wcu": 10_000.0,
        "partition_rcu": 30_000.0,
        "table_wru": 400_000.0,
        "table_rru": 400_000.0,
    },
    "one full vCPU per environment (1,769 MB)": {"memory_mb": 1769},
    "no cold starts": {"init_ms": 0.0},
}


def ablate(params: Params, size: int, bound: float) -> dict[str, float]:
    """Seconds to the last CheckpointNow (inf: not within ``bound`` * 2) with each limit relaxed alone."""
    return {
        name: round(within(replace(params, **change), size, bound * 2)["last_checkpoint_now_s"], 2)
        for name, change in {"as is": {}, **RELAXATIONS}.items()
    }


# -- output -----------------------------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| nodes | warnings (jobs) | last CheckpointNow s | AWS calls / warning | GetItem | Transact | Update | "
        "Query | PutEvents | publishes | conflicts | busiest partition: peak / limit per s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        c = r["calls_per_warning"]
        b = r["busiest_partition"]
        lines.append(
            f"| {r['nodes']:,} | {r['warnings']:,} ({r['affected_jobs']:,}) | {r['last_checkpoint_now_s']:.1f} | "
            f"{r['aws_calls_per_warning']:.2f} | {c.get('DynamoDB GetItem', 0):.2f} | "
            f"{c.get('DynamoDB TransactWriteItems', 0):.2f} | {c.get('DynamoDB UpdateItem', 0):.2f} | "
            f"{c.get('DynamoDB Query', 0):.2f} | {c.get('EventBridge PutEvents', 0):.2f} | "
            f"{c.get('broker publish', 0):.2f} | {r['conflicts']:,} | "
            f"{b['name']}: {b['peak_units_per_s']:,} / {b['limit_per_s']:,.0f} |"
        )
    return "\n".join(lines)


def report(params: Params, rows: list[dict[str, Any]], bounds: list[dict[str, Any]], wall: float) -> str:
    lines = [
        f"reclaim {params.reclaim:.0%} of the fleet, jobs of {params.workers} workers ({params.placement}), "
        f"{params.tenants} tenant(s); concurrency cap {params.concurrency_cap}, {params.memory_mb} MB "
        f"(CPU share {params.cpu_share:.2f}: {params.cpu_ms / params.cpu_share:.1f} ms of handler CPU per warning)",
        "",
        table(rows),
        "",
    ]
    for r in rows:
        waited = ", ".join(f"{k} {v:.1f} s" for k, v in list(r["last_job_waited_for"].items())[:3])
        lines.append(
            f"{r['nodes']:>7,} nodes: peak concurrency {r['peak_concurrency']}, failed records "
            f"{r['failed_records']}, CheckpointNow / Reconfigure per job {r['checkpoint_now_per_job']} / "
            f"{r['reconfigure_per_job']} ({r['republished_commands']} republished from an outbox); the last job "
            f"waited for: {waited}"
        )
    lines.append("")
    for b in bounds:
        beyond = f"fails at {b['first_failing_nodes']:,}" if b["first_failing_nodes"] else "the largest searched"
        lines.append(
            f"largest fleet with every CheckpointNow out within {b['bound_s']:.0f} s: {b['largest_nodes']:,} nodes "
            f"({beyond}); limit: {b['limit']}"
        )
        for name, seconds in b.get("ablation", {}).items():
            lines.append(f"    {name:<45} last CheckpointNow {seconds:.1f} s")
    lines.append(f"(model run in {wall:.1f} s)")
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """``value`` with every infinite or NaN number (a fleet never served) as null: JSON has no Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def params_of(args: argparse.Namespace) -> Params:
    """The parameters, or SystemExit naming the one that makes no sense."""
    params = Params(**{f.name: getattr(args, f.name) for f in fields(Params)})
    if not 0 < params.reclaim <= 1:
        raise SystemExit(f"--reclaim {params.reclaim}: a share of the fleet, in (0, 1]")
    positive = ("workers", "tenants", "batch_size", "memory_mb", "table_partitions", "sdk_attempts", "save_attempts")
    for name in positive:
        if getattr(params, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(params, name)}: must be at least 1")
    smallest = params.workers * round(1 / params.reclaim)
    if any(size < smallest for size in args.sizes):
        raise SystemExit(f"--sizes {args.sizes}: a fleet below {smallest} nodes holds no job in the reclaimed pool")
    return params


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The service logs each outbox it publishes again; the report counts them (republished_commands).
    logging.getLogger("ringfleet").setLevel(logging.ERROR)
    params = params_of(args)
    t0 = time.perf_counter()
    rows = [run_scenario(params, size) for size in args.sizes]
    known = {r["nodes"]: r["last_checkpoint_now_s"] for r in rows}
    bounds = [largest_fleet(params, bound, known, args.max_search) for bound in (TARGET_S, NOTICE_S)]
    if args.ablate:
        for b in bounds:
            if b["first_failing_nodes"]:
                b["ablation"] = ablate(params, b["first_failing_nodes"], b["bound_s"])
    wall = time.perf_counter() - t0
    if args.json:
        result = {
            "params": {f.name: getattr(params, f.name) for f in fields(Params)},
            "scenarios": rows,
            "largest_fleet": bounds,
            "wall_s": round(wall, 2),
        }
        print(json.dumps(json_safe(result), default=str, allow_nan=False))
    else:
        print(report(params, rows, bounds, wall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
