"""A simulated day of job arrivals on the local spot market: decide_scaling against two baselines, same trace.

- (a) static on-demand: a fleet sized for the trace's peak, paid around the clock, never interrupted;
- (b) all-in spot: elastic like ours, but every worker in the single cheapest spot pool;
- ours: ``decide_scaling`` each minute (cost per useful GPU-hour, per-pool cap, hold then scale to zero).

Each minute spot instances are interrupted at their pool's rate; an interrupted job stalls while it recovers
(checkpoint on notice, replacement, ring re-formed) and a replacement is launched. New instances take a few
minutes to boot. Prints total cost, job-hours lost to interruptions and total completion time for each, and the
ratios the issue sets as targets: >= 60 % cheaper than (a), <= 5 % longer completion, fewer lost hours than (b).

    .venv/bin/python bench/fleet_cost.py [--seed 7] [--jobs 40]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ringfleet.domain.scaling import FleetState, JobDemand, Pool, ScalingPolicy, decide_scaling
from ringfleet.local.spot_market import LOCAL_SPOT_MARKET

DAY_MINUTES = 24 * 60
BOOT_MINUTES = 3
#: A job stalls this long per interruption: notice, emergency checkpoint, replacement, ring re-formed.
RECOVERY_MINUTES = 4
START = datetime(2026, 3, 1, tzinfo=UTC)


@dataclass
class SimJob:
    job_id: str
    arrival: int
    min_workers: int
    max_workers: int
    instance_types: tuple[str, ...]
    #: Minutes of training at max_workers; fewer workers progress proportionally slower.
    work: float
    progress: float = 0.0
    stalled_until: int = -1
    finished: int | None = None
    lost_minutes: float = 0.0
    #: instance ids assigned
    workers: set[int] = field(default_factory=set)


@dataclass
class Instance:
    iid: int
    pool: Pool
    ready_at: int
    job: str | None = None


def make_trace(seed: int, n_jobs: int) -> list[SimJob]:
    rng = random.Random(seed)
    jobs = []
    for i in range(n_jobs):
        # Busier during the working day: arrivals cluster between 08:00 and 18:00.
        arrival = int(rng.triangular(0, DAY_MINUTES - 180, 13 * 60))
        hi = rng.choice([2, 4, 4, 8, 8, 16])
        types = rng.choice([("g5.xlarge",), ("g5.xlarge", "g6.xlarge"), ("g4dn.xlarge", "g6.xlarge"), ("g4dn.xlarge",)])
        jobs.append(SimJob(f"job-{i}", arrival, max(1, hi // 2), hi, types, work=rng.uniform(60, 360)))
    return sorted(jobs, key=lambda j: j.arrival)


Decide = Callable[[list[SimJob], dict[str, list[Instance]], FleetState, int], tuple[dict[str, int], FleetState]]


def simulate(trace: Sequence[SimJob], pools: Sequence[Pool], decide: Decide, seed: int) -> dict[str, float]:
    rng = random.Random(seed * 7919 + 1)
    jobs = [SimJob(**{**j.__dict__, "workers": set()}) for j in trace]
    by_key = {p.key: p for p in pools}
    instances: dict[int, Instance] = {}
    next_id = 0
    state = FleetState()
    cost = 0.0
    t = 0
    while any(j.finished is None for j in jobs) and t < 5 * DAY_MINUTES:
        active = [j for j in jobs if j.arrival <= t and j.finished is None]
        # interruptions
        for inst in list(instances.values()):
            if inst.pool.market == "spot" and rng.random() < inst.pool.interruptions_per_hour / 60:
                del instances[inst.iid]
                job = next((j for j in active if j.job_id == inst.job), None)
                if job is not None:
                    job.workers.discard(inst.iid)
                    if t < job.stalled_until:
                        continue  # already recovering: the same recovery takes this one in
                    job.stalled_until = t + RECOVERY_MINUTES
                    job.lost_minutes += RECOVERY_MINUTES
        by_pool: dict[str, list[Instance]] = {}
        for inst in instances.values():
            by_pool.setdefault(inst.pool.key, []).append(inst)
        state = FleetState(
            targets=state.targets,
            fulfilled={k: len(by_pool.get(k, [])) for k in state.targets},
            last_scaled_at=state.last_scaled_at,
            surplus_since=state.surplus_since,
            refused_until=state.refused_until,
        )
        targets, state = decide(active, by_pool, state, t)
        # launch up to target, release free instances above it
        for key, target in targets.items():
            have = by_pool.get(key, [])
            for _ in range(target - len(have)):
                instances[next_id] = Instance(next_id, by_key[key], t + BOOT_MINUTES)
                next_id += 1
            surplus = len(have) - target
            for inst in sorted(have, key=lambda i: i.job is not None):
                if surplus <= 0:
                    break
                if inst.job is None:
                    del instances[inst.iid]
                    surplus -= 1
        # assignment: each job keeps its workers and takes free ready instances of its types up to max_workers
        for job in active:
            job.workers &= set(instances)
            for inst in sorted(instances.values(), key=lambda i: i.pool.price_per_hour):
                if len(job.workers) >= job.max_workers:
                    break
                if inst.job is None and inst.ready_at <= t and inst.pool.instance_type in job.instance_types:
                    inst.job = job.job_id
                    job.workers.add(inst.iid)
        for inst in instances.values():
            if inst.job is not None and all(inst.iid not in j.workers for j in active):
                inst.job = None
        # progress and cost
        for job in active:
            if len(job.workers) >= job.min_workers and t >= job.stalled_until:
                job.progress += len(job.workers) / job.max_workers
            if job.progress >= job.work:
                job.finished = t + 1
                for iid in job.workers:
                    instances[iid].job = None
        cost += sum(i.pool.price_per_hour for i in instances.values()) / 60
        t += 1
    return {
        "cost": cost,
        "lost_job_hours": sum(j.lost_minutes for j in jobs) / 60,
        "completion_hours": sum((j.finished or t) - j.arrival for j in jobs) / 60,
        "minutes": t,
    }


def static_on_demand(trace: Sequence[SimJob]) -> dict[str, float]:
    """The peak-sized on-demand fleet: every job gets max_workers at arrival; the fleet is paid all day."""
    on_demand = {p.instance_type: p for p in LOCAL_SPOT_MARKET if p.market == "on-demand"}
    end = max(j.arrival + j.work for j in trace)
    peak: dict[str, int] = {}
    for minute in range(int(end) + 1):
        use: dict[str, int] = {}
        for j in trace:
            if j.arrival <= minute < j.arrival + j.work:
                cheapest = min(j.instance_types, key=lambda it: on_demand[it].price_per_hour)
                use[cheapest] = use.get(cheapest, 0) + j.max_workers
        for it, n in use.items():
            peak[it] = max(peak.get(it, 0), n)
    hours = max(24.0, end / 60)
    return {
        "cost": sum(n * on_demand[it].price_per_hour for it, n in peak.items()) * hours,
        "lost_job_hours": 0.0,
        "completion_hours": sum(j.work for j in trace) / 60,
        "minutes": end,
    }


def elastic(pools: Sequence[Pool], policy: ScalingPolicy) -> Decide:
    def decide(
        active: list[SimJob], by_pool: dict[str, list[Instance]], state: FleetState, t: int
    ) -> tuple[dict[str, int], FleetState]:
        demand = []
        for j in active:
            placed: dict[str, int] = {}
            for insts in by_pool.values():
                for inst in insts:
                    if inst.job == j.job_id:
                        placed[inst.pool.key] = placed.get(inst.pool.key, 0) + 1
            demand.append(
                JobDemand(j.job_id, "tenant", j.min_workers, j.max_workers, 1, j.instance_types, 1000.0, placed)
            )
        decision = decide_scaling(demand, pools, state, START + timedelta(minutes=t), policy)
        return dict(decision.targets), decision.state

    return decide


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--jobs", type=int, default=40)
    args = parser.parse_args(argv)

    trace = make_trace(args.seed, args.jobs)
    policy = ScalingPolicy(fleet_max_workers=512, tenant_max_workers=512)
    spot = [p for p in LOCAL_SPOT_MARKET if p.market == "spot"]
    # (b): per instance type, its cheapest spot pool only, so every job still has somewhere to run.
    cheapest: dict[str, Pool] = {}
    for p in sorted(spot, key=lambda p: p.price_per_hour):
        cheapest.setdefault(p.instance_type, p)
    all_in = ScalingPolicy(fleet_max_workers=512, tenant_max_workers=512, max_pool_share=1.0)

    results = {
        "(a) static on-demand, peak-sized": static_on_demand(trace),
        "(b) all-in cheapest spot pool": simulate(
            trace, list(cheapest.values()), elastic(list(cheapest.values()), all_in), args.seed
        ),
        "ours: decide_scaling": simulate(trace, LOCAL_SPOT_MARKET, elastic(LOCAL_SPOT_MARKET, policy), args.seed),
    }
    print(f"24 h trace: {len(trace)} jobs, {sum(j.max_workers * j.work for j in trace) / 60:.0f} worker-hours of work")
    print(f"{'policy':36} {'cost $':>10} {'lost job-h':>11} {'completion h':>13}")
    for name, r in results.items():
        print(f"{name:36} {r['cost']:10.2f} {r['lost_job_hours']:11.2f} {r['completion_hours']:13.1f}")
    a, b, ours = results.values()
    saving = 1 - ours["cost"] / a["cost"]
    longer = ours["completion_hours"] / a["completion_hours"] - 1
    print(f"ours vs (a): {saving:.1%} cheaper (target >= 60 %), completion {longer:+.1%} (target <= +5 %)")
    print(
        f"ours vs (b): {ours['lost_job_hours']:.2f} vs {b['lost_job_hours']:.2f} job-hours lost to interruptions; "
        f"cost {ours['cost'] / b['cost']:.2f}x"
    )
    met = saving >= 0.60 and longer <= 0.05 and ours["lost_job_hours"] < b["lost_job_hours"]
    print("targets met" if met else "TARGETS MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
