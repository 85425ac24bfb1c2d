"""Spot availability traces: load them, generate bursty ones, and replay them as a market that interrupts and refuses.

A trace is one JSON file per pool, in the format Can't Be Late (NSDI '24) published its measurements in
(github.com/skypilot-org/spot-traces)::

    {"metadata": {"gap_seconds": 600, ...}, "data": [16, 16, 9, 0, 0, ...]}

``data`` holds how many instances of the type the zone could launch at each tick, ``gap_seconds`` apart. A folder
of such files describes one instance type (``--trace-instance-type``, default ``p3.2xlarge``) in several zones: a
file's zone is its name up to the first ``_`` (``us-west-2a_v100_1.json`` is zone ``us-west-2a``). Replayed past
its end, a trace starts over.

:class:`TraceMarket` is the market both ``bench/fleet_cost.py`` and the local fleet emulator replay: at each
moment a spot pool can hold at most what its trace says is available; when availability drops below what is held,
the newest instances beyond it are interrupted (with the two-minute notice); a launch beyond what is available is
refused with ``InsufficientInstanceCapacity``, as EC2 Fleet reports it. Prices come from the local market's table.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ringfleet.scaling.catalog import InstanceCatalog
from ringfleet.scaling.decisions import Pool
from ringfleet_local.catalog import local_catalog
from ringfleet_local.clock import FileClock
from ringfleet_local.spot_market import LOCAL_SPOT_MARKET, market_pools

__all__ = [
    "DEFAULT_TRACE_INSTANCE_TYPE",
    "INSUFFICIENT_CAPACITY",
    "AvailabilityTrace",
    "LaunchResult",
    "TraceError",
    "TraceMarket",
    "TracePriceSource",
    "TraceReplay",
    "generate_bursty_trace",
    "load_trace",
    "load_trace_dir",
    "replay_from_environment",
    "replay_from_options",
    "write_trace",
]

DEFAULT_TRACE_INSTANCE_TYPE = "p3.2xlarge"
#: The error code EC2 Fleet reports for a spot pool with no capacity left.
INSUFFICIENT_CAPACITY = "InsufficientInstanceCapacity"


class TraceError(ValueError):
    """A trace file or folder that cannot be replayed; the message names the file and the problem."""


@dataclass(frozen=True)
class AvailabilityTrace:
    """Instances available in one zone at each tick."""

    zone: str
    gap_seconds: float
    counts: tuple[int, ...]
    #: Where it was read from (for messages).
    source: str = ""

    @property
    def hours(self) -> float:
        return len(self.counts) * self.gap_seconds / 3600

    def available(self, at_hours: float) -> int:
        """Availability at ``at_hours`` after the trace's start (it starts over past its end)."""
        tick = int(max(0.0, at_hours) * 3600 // self.gap_seconds)
        return self.counts[tick % len(self.counts)]

    @property
    def mean(self) -> float:
        return sum(self.counts) / len(self.counts)


def _parse(source: str, raw: object, zone: str) -> AvailabilityTrace:
    if not isinstance(raw, dict):
        raise TraceError(f"{source}: expected a JSON object with 'metadata' and 'data', got {type(raw).__name__}")
    counts = _counts(source, raw)
    return AvailabilityTrace(zone=zone, gap_seconds=_gap_seconds(source, raw), counts=counts, source=source)


def _counts(source: str, raw: dict[object, object]) -> tuple[int, ...]:
    """``data``: the instances available at each tick, whole and not negative."""
    if "data" not in raw:
        raise TraceError(f"{source}: missing 'data' (the instances available at each tick)")
    data = raw["data"]
    if not isinstance(data, list):
        raise TraceError(f"{source}: 'data' must be a list of instance counts, got {type(data).__name__}")
    if not data:
        raise TraceError(f"{source}: 'data' is empty")
    return tuple(_count(source, i, value) for i, value in enumerate(data))


def _count(source: str, i: int, value: object) -> int:
    # JSON has no separate integer type for floats like 3.0; booleans are refused (they are not counts).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TraceError(f"{source}: data[{i}] is {value!r} ({type(value).__name__}), not an instance count")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise TraceError(f"{source}: data[{i}] is {value!r}, not a whole number of instances")
    if value < 0:
        raise TraceError(f"{source}: data[{i}] is {value}: a count of available instances cannot be negative")
    return int(value)


def _gap_seconds(source: str, raw: dict[object, object]) -> float:
    """``metadata.gap_seconds``: the seconds between two ticks, a positive number."""
    metadata = raw.get("metadata", {})
    if not isinstance(metadata, dict):
        raise TraceError(f"{source}: 'metadata' must be an object, got {type(metadata).__name__}")
    gap = metadata.get("gap_seconds")
    if gap is None:
        raise TraceError(f"{source}: missing 'metadata.gap_seconds' (seconds between two ticks of 'data')")
    if isinstance(gap, bool) or not isinstance(gap, int | float) or not math.isfinite(gap) or gap <= 0:
        raise TraceError(f"{source}: 'metadata.gap_seconds' must be a positive number, got {gap!r}")
    return float(gap)


def zone_of(path: Path) -> str:
    """``us-west-2a_v100_1.json`` -> ``us-west-2a``."""
    return path.stem.split("_", 1)[0]


def load_trace(path: str | Path) -> AvailabilityTrace:
    """One trace file; :class:`TraceError` naming the file when it is unreadable or malformed."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except OSError as exc:
        raise TraceError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TraceError(f"{path}: not JSON ({exc})") from exc
    zone = zone_of(path)
    if not zone:
        raise TraceError(f"{path}: the file name must start with the zone, e.g. us-west-2a_v100_1.json")
    return _parse(str(path), raw, zone)


def load_trace_dir(directory: str | Path) -> dict[str, AvailabilityTrace]:
    """Every ``*.json`` trace in ``directory``, by zone."""
    directory = Path(directory)
    if not directory.is_dir():
        raise TraceError(f"{directory}: not a folder of trace files")
    files = sorted(directory.glob("*.json"))
    if not files:
        raise TraceError(f"{directory}: no *.json trace files in it")
    traces: dict[str, AvailabilityTrace] = {}
    for path in files:
        trace = load_trace(path)
        if trace.zone in traces:
            raise TraceError(f"{path}: a second trace for zone {trace.zone} (the first is {traces[trace.zone].source})")
        traces[trace.zone] = trace
    return traces


def write_trace(path: str | Path, counts: Sequence[int], gap_seconds: float, **metadata: object) -> None:
    Path(path).write_text(json.dumps({"metadata": {"gap_seconds": gap_seconds, **metadata}, "data": list(counts)}))


def generate_bursty_trace(
    seed: int,
    *,
    capacity: int,
    hours: float,
    gap_seconds: float = 600,
    outage: float = 0.3,
    scarce: float = 0.3,
    mean_outage_hours: float = 5.0,
    mean_plenty_hours: float = 6.0,
) -> list[int]:
    """Availability that swings as published GPU traces do: stretches near capacity, scarce spells of a few
    instances, and multi-hour outages at zero, with a random walk inside each. ``outage`` and ``scarce`` are the
    chances that the next spell is an outage or a scarce one."""
    rng = random.Random(seed)
    ticks = int(hours * 3600 / gap_seconds)
    per_hour = 3600 / gap_seconds
    out: list[int] = []
    regime, left = "plenty", rng.expovariate(1 / mean_plenty_hours) * per_hour
    level = float(capacity)
    while len(out) < ticks:
        if left <= 0:
            roll = rng.random()
            if roll < outage:
                regime, left = "outage", (rng.expovariate(1 / mean_outage_hours) + 1) * per_hour
            elif roll < outage + scarce:
                regime, left = "scarce", (rng.expovariate(1 / 3) + 0.5) * per_hour
            else:
                regime, left = "plenty", (rng.expovariate(1 / mean_plenty_hours) + 1) * per_hour
        goal = {"plenty": 0.85 * capacity, "scarce": 0.25 * capacity, "outage": 0.0}[regime]
        level += 0.5 * (goal - level) + (rng.gauss(0, 0.08 * capacity) if regime != "outage" else 0.0)
        level = min(float(capacity), max(0.0, level))
        out.append(round(level))
        left -= 1
    return out


@dataclass(frozen=True)
class LaunchResult:
    """What a launch of ``asked`` instances in one pool got, and the error EC2 Fleet reports for the rest."""

    granted: int
    error_code: str | None = None


class TraceMarket:
    """A spot market replaying availability traces for one instance type, with on-demand beside it (never short).

    Spot prices per zone come from the local market's table for the type (zones outside it take that table's prices
    in turn), on-demand at the type's price in ``catalog`` (default: the local cloud's), GPUs the catalog's too.
    """

    def __init__(
        self,
        traces: Mapping[str, AvailabilityTrace],
        instance_type: str = DEFAULT_TRACE_INSTANCE_TYPE,
        *,
        interruptions_per_hour: float = 0.05,
        catalog: InstanceCatalog | None = None,
    ) -> None:
        catalog = catalog or local_catalog()
        if instance_type not in catalog:
            raise TraceError(f"no local price for instance type {instance_type!r}; known: {catalog.names()}")
        self.instance_type = instance_type
        self.traces = dict(traces)
        local = {
            p.zone: p.price_per_hour
            for p in LOCAL_SPOT_MARKET
            if p.instance_type == instance_type and p.market == "spot"
        }
        local = local or {"": catalog.on_demand(instance_type) * 0.3}
        cycle = [local[z] for z in sorted(local)]
        gpus = catalog.gpus(instance_type)
        spot = [
            Pool(instance_type, zone, "spot", local.get(zone, cycle[i % len(cycle)]), interruptions_per_hour, gpus)
            for i, zone in enumerate(sorted(self.traces))
        ]
        on_demand = [
            Pool(instance_type, zone, "on-demand", catalog.on_demand(instance_type), 0.0, gpus)
            for zone in sorted(self.traces)
        ]
        self._pools = tuple(spot + on_demand)
        self._zone_of = {p.key: p.zone for p in spot}

    @property
    def all_pools(self) -> tuple[Pool, ...]:
        return self._pools

    def pools(self, instance_types: Iterable[str]) -> list[Pool]:
        wanted = set(instance_types)
        return [p for p in self._pools if p.instance_type in wanted]

    def available(self, key: str, at_hours: float) -> int | None:
        """Instances the pool can hold at ``at_hours`` (``None``: not limited, as on-demand)."""
        zone = self._zone_of.get(key)
        return None if zone is None else self.traces[zone].available(at_hours)

    def launch(self, key: str, held: int, asked: int, at_hours: float) -> LaunchResult:
        """Launch ``asked`` more in a pool that holds ``held``: what fits under availability; the rest refused."""
        cap = self.available(key, at_hours)
        if cap is None:
            return LaunchResult(asked)
        granted = max(0, min(asked, cap - held))
        return LaunchResult(granted, INSUFFICIENT_CAPACITY if granted < asked else None)

    def reclaimed(self, key: str, held: int, at_hours: float) -> int:
        """How many of the ``held`` instances the pool takes back now (availability fell below what is held)."""
        cap = self.available(key, at_hours)
        return 0 if cap is None else max(0, held - cap)

    @classmethod
    def from_dir(
        cls,
        directory: str | Path,
        instance_type: str = DEFAULT_TRACE_INSTANCE_TYPE,
        *,
        interruptions_per_hour: float = 0.05,
    ) -> TraceMarket:
        return cls(load_trace_dir(directory), instance_type, interruptions_per_hour=interruptions_per_hour)


class TraceReplay:
    """A :class:`TraceMarket` replayed in real time, ``speed`` trace-seconds per second (the local cloud's
    ``--spot-traces DIR --trace-speed X``): which held instances a pool takes back now, and the notice they get.

    The fleet emulator asks :meth:`reclaim` on every poll with the instances each spot pool holds (oldest first);
    every instance beyond what the pool's trace says is available now is returned once (the newest go first) and
    interrupted with the two-minute notice, scaled by the speed (:attr:`grace_s`). :meth:`launch` answers a launch
    as EC2 Fleet would at this moment of the trace.

    The fleet scaler runs in a process of its own (a Lambda host) and checks its launches against the same replay:
    :meth:`environment` is what the local cloud puts in the functions' environment (the folder, the speed, the
    type and the wall-clock moment the replay started), :func:`replay_from_environment` what they rebuild it from.
    Both sides then read the same moment of the trace (with ``clock=time.time``, the default of
    :func:`replay_from_options`). With ``clock=FileClock(path)`` the replay runs in simulated time instead: the trace
    stands still until whoever holds the clock moves it, and the functions read the same file (a test about the
    policy moves the trace to the moment it needs rather than waiting for the wall clock to get there); the notice
    stays :attr:`grace_s` of wall-clock time.
    """

    NOTICE_S = 120.0

    def __init__(
        self,
        market: TraceMarket,
        *,
        speed: float = 1.0,
        start_hours: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        started: float | None = None,
        source: str | Path | None = None,
    ) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise TraceError(f"the trace speed must be a positive number, got {speed!r}")
        self.market = market
        self.speed = speed
        self.start_hours = start_hours
        self._clock = clock
        #: The clock's reading at the trace's start (``started``: another process's replay of the same traces).
        self.started = clock() if started is None else started
        #: The trace folder (for :meth:`environment`).
        self.source = None if source is None else Path(source).resolve()
        #: Instances already given notice (each is reclaimed once).
        self.noticed: set[str] = set()

    @property
    def grace_s(self) -> float:
        """The spot notice in wall-clock seconds."""
        return self.NOTICE_S / self.speed

    def hours(self) -> float:
        """Where in the trace the replay is now (hours from its start)."""
        return self.start_hours + (self._clock() - self.started) * self.speed / 3600

    def reclaim(self, held: Mapping[str, Sequence[str]]) -> list[str]:
        """Instances to interrupt now: per spot pool, the newest of ``held`` beyond its availability (those
        already given notice count as gone)."""
        at = self.hours()
        out: list[str] = []
        for pool, instances in sorted(held.items()):
            staying = [i for i in instances if i not in self.noticed]
            excess = self.market.reclaimed(pool, len(staying), at)
            if excess:
                out += staying[len(staying) - excess :]
        self.noticed.update(out)
        return out

    def launch(self, pool: str, held: int, asked: int) -> LaunchResult:
        return self.market.launch(pool, held, asked, self.hours())

    def environment(self) -> dict[str, str]:
        """What a process of the local cloud needs to replay the same traces at the same moment (wall clock)."""
        if self.source is None:
            raise TraceError("a replay built without its trace folder cannot be shared with other processes")
        return {
            ENV_TRACES: str(self.source),
            ENV_SPEED: repr(self.speed),
            ENV_INSTANCE_TYPE: self.market.instance_type,
            ENV_STARTED: repr(self.started - self.start_hours * 3600 / self.speed),
            **({ENV_CLOCK: str(self._clock.path)} if isinstance(self._clock, FileClock) else {}),
        }


ENV_TRACES = "RINGFLEET_SPOT_TRACES"
ENV_SPEED = "RINGFLEET_TRACE_SPEED"
ENV_INSTANCE_TYPE = "RINGFLEET_TRACE_INSTANCE_TYPE"
ENV_STARTED = "RINGFLEET_TRACE_STARTED_AT"
#: A :class:`~ringfleet_local.clock.FileClock`'s file: the replay reads the trace's moment from it (simulated time).
ENV_CLOCK = "RINGFLEET_TRACE_CLOCK"


class TracePriceSource:
    """``PriceSource`` while traces replay: the traced type's pools from the :class:`TraceMarket` (its zones, the
    ones the replay limits), every other type's from the local market's table."""

    def __init__(self, market: TraceMarket) -> None:
        self.market = market

    def pools(self, catalog: InstanceCatalog, instance_types: Iterable[str]) -> list[Pool]:
        wanted = {t for t in instance_types if t in catalog}
        traced = self.market.pools(wanted)
        return traced + market_pools(catalog, wanted - {self.market.instance_type})


def replay_from_options(
    directory: str | Path | None,
    speed: float = 1.0,
    instance_type: str = DEFAULT_TRACE_INSTANCE_TYPE,
    *,
    clock: Callable[[], float] = time.time,
) -> TraceReplay | None:
    """What ``local up --spot-traces DIR --trace-speed X`` replays (``None`` without a folder), on the wall clock
    so that the functions' processes replay the same moment (:meth:`TraceReplay.environment`)."""
    if directory is None:
        return None
    market = TraceMarket.from_dir(directory, instance_type)
    return TraceReplay(market, speed=speed, clock=clock, source=directory)


def replay_from_environment(env: Mapping[str, str]) -> TraceReplay | None:
    """The replay :meth:`TraceReplay.environment` describes (``None`` when no traces replay)."""
    directory = env.get(ENV_TRACES)
    if not directory:
        return None
    try:
        speed = float(env.get(ENV_SPEED) or 1.0)
        started = float(env[ENV_STARTED]) if env.get(ENV_STARTED) else None
    except ValueError as exc:
        raise TraceError(f"{ENV_SPEED} / {ENV_STARTED}: not a number ({exc})") from exc
    market = TraceMarket.from_dir(directory, env.get(ENV_INSTANCE_TYPE) or DEFAULT_TRACE_INSTANCE_TYPE)
    clock: Callable[[], float] = FileClock(env[ENV_CLOCK]) if env.get(ENV_CLOCK) else time.time
    return TraceReplay(market, speed=speed, clock=clock, started=started, source=directory)
