"""Jobs with deadlines replayed on spot availability traces: four fleet policies in the same run, same market.

- (a) on-demand, elastic: each job gets its workers on-demand while it runs, nothing idle, never interrupted;
- (b) single-pool spot: every worker in the cheapest spot pool; a job runs with what that zone has (>= min);
- (c) spot with failover: each job runs its workers in one spot pool and, when preempted or refused there,
  relaunches in the next pool that has room for all of them (SkyPilot managed jobs' behaviour; spot only);
- (d) ours: ``decide_scaling`` every minute (deadline-aware, shares following supply, learned interruption rates).

The market replays one availability trace per zone (``ringfleet_local.spot_traces.TraceMarket``): a launch beyond
what a zone has is refused, and when availability drops below what is held the newest instances are reclaimed.
Every policy pays the same recovery costs: an instance boots for ``BOOT_MINUTES`` before it trains; a job stalls
``RECOVERY_MINUTES`` when it loses a worker (notice, emergency checkpoint, ring re-formed without it) and
``RECONFIG_MINUTES`` when a worker joins or replaces another at a step boundary. GPU-hours lost are instance-hours
paid that did not train (booting, idle, stalled). Each seed starts the traces at a different hour and draws its
own jobs; the table shows medians over seeds and each policy's ratios to (a).

    .venv/bin/python bench/fleet_cost.py [--trace-dir bench/traces/p3-16] [--seeds 5] [--jobs 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ringfleet_local.spot_traces import DEFAULT_TRACE_INSTANCE_TYPE, TraceError, TraceMarket

from ringfleet.scaling.decisions import FleetState, JobDemand, ScalingPolicy, decide_scaling, observe_fleet

BOOT_MINUTES = 3
RECOVERY_MINUTES = 6
RECONFIG_MINUTES = 1
START = datetime(2026, 3, 1, tzinfo=UTC)
DEFAULT_TRACES = Path(__file__).parent / "traces" / "p3-16"
MAX_DAYS = 10


@dataclass
class SimJob:
    job_id: str
    arrival: int  # minute
    min_workers: int
    max_workers: int
    #: Hours of training at max_workers; fewer workers progress proportionally slower.
    work_hours: float
    deadline: int  # minute
    progress: float = 0.0
    stalled_until: int = -1
    finished: int | None = None
    workers: set[int] = field(default_factory=set)
    #: (c) only: the pool the job's workers run in.
    home: str | None = None

    def remaining(self) -> float:
        return max(0.0, self.work_hours - self.progress)


@dataclass
class Instance:
    iid: int
    pool: str
    price: float
    ready_at: int
    job: str | None = None


def make_jobs(seed: int, n_jobs: int) -> list[SimJob]:
    """Jobs of 2-6 workers and 24-96 worker-hours arriving over two days, each with a deadline it could meet on
    on-demand (1.3-2x its training time at full size)."""
    rng = random.Random(seed)
    jobs = []
    for i in range(n_jobs):
        workers = rng.randint(2, 6)
        work = rng.uniform(24, 96) / workers
        arrival = int(rng.uniform(0, 48 * 60))
        deadline = arrival + int(work * rng.uniform(1.3, 2.0) * 60)
        jobs.append(SimJob(f"job-{i}", arrival, max(1, workers // 2), workers, work, deadline))
    return sorted(jobs, key=lambda j: j.arrival)


#: A policy: (minute, active jobs, instances by id, market) -> target per pool.
Policy = Callable[[int, list[SimJob], dict[int, Instance], TraceMarket], dict[str, int]]


@dataclass
class Sim:
    market: TraceMarket
    offset_hours: float
    jobs: list[SimJob]
    instances: dict[int, Instance] = field(default_factory=dict)
    next_id: int = 0
    cost: float = 0.0
    lost_gpu_hours: float = 0.0
    #: pool -> interruptions this minute; pool -> refused launches this minute.
    interrupted: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    #: Jobs that lost a worker to a reclaim this minute.
    hit: set[str] = field(default_factory=set)

    def hours(self, t: int) -> float:
        return self.offset_hours + t / 60

    def held(self, pool: str) -> list[Instance]:
        return sorted((i for i in self.instances.values() if i.pool == pool), key=lambda i: i.iid)

    def job(self, job_id: str | None) -> SimJob | None:
        return next((j for j in self.jobs if j.job_id == job_id), None)

    def lose(self, inst: Instance, t: int) -> None:
        del self.instances[inst.iid]
        job = self.job(inst.job)
        if job is not None and job.finished is None:
            job.workers.discard(inst.iid)
            job.stalled_until = max(job.stalled_until, t + RECOVERY_MINUTES)
            self.hit.add(job.job_id)

    def reclaim(self, t: int) -> None:
        self.interrupted = {}
        self.hit = set()
        for pool in {i.pool for i in self.instances.values()}:
            held = self.held(pool)
            n = self.market.reclaimed(pool, len(held), self.hours(t))
            for inst in held[len(held) - n :]:
                self.lose(inst, t)
            if n:
                self.interrupted[pool] = n

    def apply(self, targets: dict[str, int], t: int) -> None:
        self.refused = {}
        price = {p.key: p.price_per_hour for p in self.market.all_pools}
        for pool, target in targets.items():
            held = self.held(pool)
            if target > len(held):
                result = self.market.launch(pool, len(held), target - len(held), self.hours(t))
                for _ in range(result.granted):
                    self.instances[self.next_id] = Instance(self.next_id, pool, price[pool], t + BOOT_MINUTES)
                    self.next_id += 1
                if result.error_code:
                    self.refused[pool] = target - len(held) - result.granted
            surplus = len(held) - target
            for inst in held:
                if surplus <= 0:
                    break
                if inst.job is None:
                    del self.instances[inst.iid]
                    surplus -= 1

    def assign(self, active: list[SimJob], t: int, placements: dict[str, dict[str, int]] | None = None) -> None:
        free = [i for i in self.instances.values() if i.job is None and i.ready_at <= t]
        free.sort(key=lambda i: (i.price, i.iid))
        if placements is not None:
            self._assign_placed(active, t, placements, free)
            return
        for job in active:
            changed = self._give(job, free[: max(0, job.max_workers - len(job.workers))], free)
            # a cheaper (spot) worker replaces an on-demand one at a step boundary: make before break
            dear = sorted((self.instances[w] for w in job.workers), key=lambda i: -i.price)
            for worker in dear:
                cheaper = next((i for i in free if i.price < worker.price), None)
                if cheaper is None:
                    break
                free.remove(cheaper)
                cheaper.job, worker.job = job.job_id, None
                job.workers.discard(worker.iid)
                job.workers.add(cheaper.iid)
                changed = True
            if changed and job.progress > 0:
                job.stalled_until = max(job.stalled_until, t + RECONFIG_MINUTES)

    def _assign_placed(
        self, active: list[SimJob], t: int, placements: dict[str, dict[str, int]], free: list[Instance]
    ) -> None:
        """Free instances go to the job the decision launched them for (its pool counts), past the job's size
        when a spot worker is to replace an on-demand one: the job then releases its dearest workers at a step
        boundary (make before break). Left-over spot instances go to jobs still short, up to their size."""
        for job in active:
            changed = False
            for pool, n in placements.get(job.job_id, {}).items():
                have = sum(1 for w in job.workers if self.instances[w].pool == pool)
                changed |= self._give(job, [i for i in free if i.pool == pool][: max(0, n - have)], free)
            if changed:
                self._trim(job, t)
        for job in active:
            spare = [i for i in free if not i.pool.startswith("on-demand:")]
            if self._give(job, spare[: max(0, job.max_workers - len(job.workers))], free):
                self._trim(job, t)

    def _give(self, job: SimJob, instances: list[Instance], free: list[Instance]) -> bool:
        """Hands ``instances`` (taken out of ``free``) to ``job``; whether there were any."""
        for inst in instances:
            free.remove(inst)
            inst.job = job.job_id
            job.workers.add(inst.iid)
        return bool(instances)

    def _trim(self, job: SimJob, t: int) -> None:
        ready = sorted(
            (self.instances[w] for w in job.workers if self.instances[w].ready_at <= t), key=lambda i: -i.price
        )
        for worker in ready[: max(0, len(job.workers) - job.max_workers)]:
            worker.job = None
            job.workers.discard(worker.iid)
        if job.progress > 0:
            job.stalled_until = max(job.stalled_until, t + RECONFIG_MINUTES)

    def step(self, active: list[SimJob], t: int) -> None:
        training: set[int] = set()
        for job in active:
            ready = {w for w in job.workers if self.instances[w].ready_at <= t}
            if len(ready) >= job.min_workers and t >= job.stalled_until:
                job.progress += len(ready) / job.max_workers / 60
                training |= ready
            if job.progress >= job.work_hours:
                job.finished = t + 1
                for iid in job.workers:
                    self.instances[iid].job = None
                job.workers.clear()
        for inst in self.instances.values():
            self.cost += inst.price / 60
            if inst.iid not in training:
                self.lost_gpu_hours += 1 / 60


def simulate(
    market: TraceMarket, jobs: Sequence[SimJob], offset_hours: float, policy: Policy, *, failover: bool = False
) -> dict[str, float]:
    sim = Sim(market, offset_hours, [SimJob(**{**j.__dict__, "workers": set()}) for j in jobs])
    t = 0
    while any(j.finished is None for j in sim.jobs) and t < MAX_DAYS * 24 * 60:
        _minute(sim, policy, t, failover=failover)
        t += 1
    return _outcome(sim, t)


def _minute(sim: Sim, policy: Policy, t: int, *, failover: bool) -> None:
    """One minute: the market reclaims, the policy decides and its instances are assigned, the jobs train."""
    active = [j for j in sim.jobs if j.arrival <= t and j.finished is None]
    sim.reclaim(t)
    if failover:
        _failover(sim, active, t)
    else:
        sim.apply(policy(t, active, sim.instances, sim.market), t)
        sim.assign(active, t, getattr(policy, "placements", None))
    if hasattr(policy, "observe"):
        policy.observe(sim, t)
    sim.step(active, t)


def _outcome(sim: Sim, end: int) -> dict[str, float]:
    """The run's figures; a job unfinished at minute ``end`` counts as completing then."""
    done = [j for j in sim.jobs if j.finished is not None]
    return {
        "cost_usd": sim.cost,
        "completion_h": statistics.mean(((j.finished or end) - j.arrival) / 60 for j in sim.jobs),
        "deadlines_met": sum(1 for j in done if (j.finished or 0) <= j.deadline),
        "jobs": len(sim.jobs),
        "gpu_hours_lost": sim.lost_gpu_hours,
    }


# -- the policies ----------------------------------------------------------------------------------------------


def on_demand_elastic(
    t: int, active: list[SimJob], instances: dict[int, Instance], market: TraceMarket
) -> dict[str, int]:
    pool = next(p.key for p in market.all_pools if p.market == "on-demand")
    return {pool: sum(j.max_workers for j in active)}


def single_pool_spot(
    t: int, active: list[SimJob], instances: dict[int, Instance], market: TraceMarket
) -> dict[str, int]:
    pool = min((p for p in market.all_pools if p.market == "spot"), key=lambda p: p.price_per_hour).key
    return {pool: sum(j.max_workers for j in active)}


def _spot_keys(market: TraceMarket) -> list[str]:
    return [p.key for p in sorted((p for p in market.all_pools if p.market == "spot"), key=lambda p: p.price_per_hour)]


def _next_pool(market: TraceMarket, current: str | None) -> str:
    keys = _spot_keys(market)
    if current is None:
        return keys[0]
    return keys[(keys.index(current) + 1) % len(keys)]


def _failover(sim: Sim, active: list[SimJob], t: int) -> None:
    """(c): each job is one cluster of ``max_workers`` in one spot pool. Preempted, it tears the cluster down and
    relaunches it in the next pool; a launch there either gets the whole cluster or fails, and the next minute it
    tries the pool after that."""
    price = {p.key: p.price_per_hour for p in sim.market.all_pools}
    for job in active:
        if job.home is None:
            job.home = _next_pool(sim.market, None)
        elif job.job_id in sim.hit:
            for iid in list(job.workers):
                sim.lose(sim.instances[iid], t)
            job.home = _next_pool(sim.market, job.home)
        if job.workers:
            continue
        held = len(sim.held(job.home))
        if sim.market.launch(job.home, held, job.max_workers, sim.hours(t)).error_code:
            job.home = _next_pool(sim.market, job.home)
            continue
        for _ in range(job.max_workers):
            sim.instances[sim.next_id] = Instance(sim.next_id, job.home, price[job.home], t + BOOT_MINUTES, job.job_id)
            job.workers.add(sim.next_id)
            sim.next_id += 1


class Ours:
    """(d): decide_scaling each minute, with the fleet's observations (interruptions, refusals) fed back."""

    def __init__(self, policy: ScalingPolicy) -> None:
        self.policy = policy
        self.state = FleetState()
        #: job -> pool -> workers, from the last decision: which job each new instance is for.
        self.placements: dict[str, dict[str, int]] = {}

    def __call__(
        self, t: int, active: list[SimJob], instances: dict[int, Instance], market: TraceMarket
    ) -> dict[str, int]:
        now = START + timedelta(minutes=t)
        held: dict[str, int] = {}
        for inst in instances.values():
            held[inst.pool] = held.get(inst.pool, 0) + 1
        self.state = FleetState(**{**self.state.__dict__, "fulfilled": {k: held.get(k, 0) for k in self.state.targets}})
        demand = []
        for job in active:
            placed: dict[str, int] = {}
            for iid in job.workers:
                placed[instances[iid].pool] = placed.get(instances[iid].pool, 0) + 1
            demand.append(
                JobDemand(
                    job.job_id, "tenant", job.min_workers, job.max_workers, 1, (market.instance_type,), 10_000.0,
                    placed, deadline=START + timedelta(minutes=job.deadline), remaining_hours=job.remaining(),
                )
            )  # fmt: skip
        decision = decide_scaling(demand, market.pools({market.instance_type}), self.state, now, self.policy)
        self.state = decision.state
        self.placements = {j: dict(p) for j, p in decision.placements.items()}
        return dict(decision.targets)

    def observe(self, sim: Sim, t: int) -> None:
        running: dict[str, int] = {}
        for inst in sim.instances.values():
            running[inst.pool] = running.get(inst.pool, 0) + 1
        self.state = observe_fleet(self.state, START + timedelta(minutes=t), running, sim.interrupted)


# -- the run ---------------------------------------------------------------------------------------------------

NAMES = ("(a) on-demand elastic", "(b) single-pool spot", "(c) spot + failover", "(d) ours")


def run(market: TraceMarket, seeds: int, n_jobs: int) -> dict[str, dict[str, float]]:
    policy = ScalingPolicy(fleet_max_workers=512, tenant_max_workers=512, capacity_grace=timedelta(0))
    span = min(t.hours for t in market.traces.values())
    per_seed: dict[str, list[dict[str, float]]] = {n: [] for n in NAMES}
    for seed in range(seeds):
        jobs = make_jobs(seed, n_jobs)
        offset = random.Random(seed).uniform(0, span)
        per_seed[NAMES[0]].append(simulate(market, jobs, offset, on_demand_elastic))
        per_seed[NAMES[1]].append(simulate(market, jobs, offset, single_pool_spot))
        per_seed[NAMES[2]].append(simulate(market, jobs, offset, on_demand_elastic, failover=True))
        per_seed[NAMES[3]].append(simulate(market, jobs, offset, Ours(policy)))
    return {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in per_seed.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace-dir", type=Path, default=DEFAULT_TRACES, help="a folder of availability traces")
    parser.add_argument("--trace-instance-type", default=DEFAULT_TRACE_INSTANCE_TYPE)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="3 seeds")
    parser.add_argument("--json", action="store_true", help="print the table as one JSON object")
    args = parser.parse_args(argv)
    try:
        market = TraceMarket.from_dir(args.trace_dir, args.trace_instance_type)
    except TraceError as exc:
        print(f"fleet_cost: {exc}", file=sys.stderr)
        return 2
    seeds = 3 if args.quick else args.seeds
    results = run(market, seeds, args.jobs)
    base = results[NAMES[0]]
    if args.json:
        print(json.dumps({"traces": str(args.trace_dir), "policies": results}, indent=2))
    else:
        zones = ", ".join(f"{z} (mean {t.mean:.1f})" for z, t in sorted(market.traces.items()))
        print(f"traces {args.trace_dir}: {market.instance_type} in {zones}; {args.jobs} jobs, medians of {seeds}")
        print(f"{'policy':24} {'cost $':>9} {'x (a)':>6} {'completion h':>13} {'deadlines met':>14} {'GPU-h lost':>11}")
        for name, r in results.items():
            print(
                f"{name:24} {r['cost_usd']:9.0f} {_ratio(r['cost_usd'], base['cost_usd']):>6} "
                f"{r['completion_h']:13.1f} {r['deadlines_met']:>8.0f} of {r['jobs']:<3.0f} {r['gpu_hours_lost']:11.1f}"
            )
    ours, failover = results[NAMES[3]], results[NAMES[2]]
    met = (
        ours["cost_usd"] <= 0.4 * base["cost_usd"]
        and ours["deadlines_met"] >= base["deadlines_met"]
        and (ours["cost_usd"] < failover["cost_usd"] or ours["deadlines_met"] > failover["deadlines_met"])
    )
    if not args.json:
        print(
            f"ours: {_cheaper(ours['cost_usd'], base['cost_usd'])} than (a) (target >= 60 %), "
            f"cost / (c)'s: {_ratio(ours['cost_usd'], failover['cost_usd'])}; "
            + ("targets met" if met else "TARGETS MISSED")
        )
    return 0 if met else 1


def _ratio(cost: float, baseline: float) -> str:
    """``cost / baseline`` to two places; "n/a" when the baseline spent nothing (a policy that launched no instance,
    e.g. failover on traces of single-instance zones for a multi-worker job)."""
    return f"{cost / baseline:.2f}" if baseline > 0 else "n/a"


def _cheaper(cost: float, baseline: float) -> str:
    return f"{1 - cost / baseline:.0%} cheaper" if baseline > 0 else "n/a cheaper ((a) spent nothing)"


if __name__ == "__main__":
    sys.exit(main())
