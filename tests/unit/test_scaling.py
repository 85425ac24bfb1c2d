"""decide_scaling: properties over generated jobs, pools and fleets, and the scenarios a fleet owner would notice."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfleet.scaling.decisions import (
    FleetState,
    JobDemand,
    Pool,
    ScalingPolicy,
    decide_scaling,
    learned_rate,
    observe_fleet,
    pool_key,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
TYPES = ("g5.xlarge", "g4dn.xlarge", "p3.2xlarge")
ZONES = ("us-east-1a", "us-east-1b", "us-east-1c")
ON_DEMAND = {"g5.xlarge": 1.006, "g4dn.xlarge": 0.526, "p3.2xlarge": 3.06}


def market(spot_prices: dict[tuple[str, str], float] | None = None, rate: float = 0.05) -> list[Pool]:
    """Spot pools in every type x zone (about a third of on-demand) and one on-demand pool per type and zone."""
    pools = []
    for t in TYPES:
        for z in ZONES:
            price = (spot_prices or {}).get((t, z), ON_DEMAND[t] * 0.32)
            pools.append(Pool(t, z, "spot", price, rate, 1))
            pools.append(Pool(t, z, "on-demand", ON_DEMAND[t], 0.0, 1))
    return pools


def job(
    name: str, workers: int, *, tenant: str = "acme", types: tuple[str, ...] = ("g5.xlarge",), **kw: object
) -> JobDemand:
    fields: dict[str, object] = {
        "job_id": name,
        "tenant": tenant,
        "min_workers": kw.pop("min_workers", 1),
        "max_workers": workers,
        "gpus_per_worker": 1,
        "instance_types": types,
        "budget_usd_per_hour": kw.pop("budget", 1000.0),
    }
    fields.update(kw)
    return JobDemand(**fields)  # type: ignore[arg-type]


# -- strategies ----------------------------------------------------------------------------------------------------

jobs_st = st.lists(
    st.builds(
        lambda i, lo, extra, tenant, types, budget: JobDemand(
            job_id=f"job-{i}",
            tenant=tenant,
            min_workers=lo,
            max_workers=lo + extra,
            gpus_per_worker=1,
            instance_types=types,
            budget_usd_per_hour=budget,
        ),
        st.integers(0, 10**6),
        st.integers(1, 16),
        st.integers(0, 16),
        st.sampled_from(["acme", "globex", "initech"]),
        st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True).map(tuple),
        st.floats(0.5, 200.0),
    ),
    max_size=8,
    unique_by=lambda j: j.job_id,
)
policy_st = st.builds(
    ScalingPolicy,
    max_pool_share=st.floats(0.1, 1.0),
    fleet_min_workers=st.integers(0, 4),
    fleet_max_workers=st.integers(4, 80),
    tenant_max_workers=st.integers(1, 40),
)


def fresh(decision_policy: ScalingPolicy, jobs: list[JobDemand], pools: list[Pool] | None = None) -> int:
    return decide_scaling(jobs, pools or market(), FleetState(), NOW, decision_policy).total


# -- properties ----------------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(jobs=jobs_st, more=jobs_st, policy=policy_st)
def test_more_demand_never_means_a_smaller_fleet(
    jobs: list[JobDemand], more: list[JobDemand], policy: ScalingPolicy
) -> None:
    # given some jobs, and the same jobs with more admitted after them
    extra = [replace(j, job_id=f"more-{j.job_id}") for j in more]
    # when the scaler decides for each
    # then the larger demand gets at least as many workers
    assert fresh(policy, jobs) <= fresh(policy, jobs + extra)


@settings(max_examples=150, deadline=None)
@given(jobs=jobs_st, policy=policy_st, grow=st.integers(1, 8))
def test_a_job_asking_for_more_workers_never_shrinks_the_fleet(
    jobs: list[JobDemand], policy: ScalingPolicy, grow: int
) -> None:
    bigger = [replace(j, max_workers=j.max_workers + grow) for j in jobs]
    assert fresh(policy, jobs) <= fresh(policy, bigger)


@settings(max_examples=200, deadline=None)
@given(jobs=jobs_st, policy=policy_st)
def test_every_bound_is_respected(jobs: list[JobDemand], policy: ScalingPolicy) -> None:
    decision = decide_scaling(jobs, market(), FleetState(), NOW, policy)
    # the fleet stays within its bounds
    assert decision.total <= max(policy.fleet_max_workers, policy.fleet_min_workers)
    assert decision.total >= policy.fleet_min_workers
    # each job gets nothing (it waits) or between its min and max workers
    for j in jobs:
        n = decision.allotted[j.job_id]
        assert n == 0 or j.min_workers <= n <= j.max_workers
    # each tenant stays within its bound
    for tenant in {j.tenant for j in jobs}:
        assert sum(decision.allotted[j.job_id] for j in jobs if j.tenant == tenant) <= policy.tenant_max_workers
    # the fleet runs exactly the workers the jobs got (plus the warm minimum)
    assert decision.total == max(decision.wanted, policy.fleet_min_workers)


@settings(max_examples=200, deadline=None)
@given(jobs=jobs_st, policy=policy_st)
def test_spot_pools_share_the_fleet_and_past_their_shares_take_more_before_any_on_demand(
    jobs: list[JobDemand], policy: ScalingPolicy
) -> None:
    # (The share used to cap a pool at a share of demand, sending the rest to on-demand even while spot pools had
    # capacity: the bug of issue 14. It now spreads workers first and follows supply after.)
    decision = decide_scaling(jobs, market(), FleetState(), NOW, policy)
    cap = max(1, math.ceil(policy.max_pool_share * max(decision.wanted, policy.fleet_min_workers)))
    spot = {k: n for k, n in decision.targets.items() if k.startswith("spot:")}
    for key, n in spot.items():
        if n > cap:
            # a pool beyond its share only once every pool of its type holds its share
            instance_type = key.split(":")[1]
            assert all(spot.get(pool_key("spot", instance_type, z), 0) >= cap for z in ZONES), (key, spot)
    # no pool is known to be short, so nothing goes to on-demand
    assert not [k for k, n in decision.targets.items() if n and k.startswith("on-demand:")]


@settings(max_examples=100, deadline=None)
@given(jobs=jobs_st, idle_minutes=st.integers(0, 120))
def test_an_idle_fleet_goes_to_zero_after_the_idle_timeout_and_not_before(
    jobs: list[JobDemand], idle_minutes: int
) -> None:
    # given a fleet sized for some jobs, all of which have since finished
    policy = ScalingPolicy()
    running = decide_scaling(jobs, market(), FleetState(), NOW, policy)
    finished_at = NOW + timedelta(minutes=1)
    after_finish = decide_scaling([], market(), running.state, finished_at, policy)
    # when the scaler decides again later with no demand
    later = decide_scaling([], market(), after_finish.state, finished_at + timedelta(minutes=idle_minutes), policy)
    # then it holds its workers until the idle timeout, and has none after it
    if timedelta(minutes=idle_minutes) >= max(policy.idle_timeout, policy.scale_in_cooldown):
        assert later.total == 0
    else:
        assert later.total == running.total


@settings(max_examples=100, deadline=None)
@given(jobs=jobs_st.filter(lambda js: len(js) > 0), refused_zones=st.lists(st.sampled_from(ZONES), unique=True))
def test_refused_spot_pools_get_nothing_new_and_the_rest_falls_back_to_on_demand(
    jobs: list[JobDemand], refused_zones: list[str]
) -> None:
    policy = ScalingPolicy()
    refused = {pool_key("spot", t, z): NOW + timedelta(minutes=5) for t in TYPES for z in refused_zones}
    decision = decide_scaling(jobs, market(), FleetState(refused_until=refused), NOW, policy)
    # no worker is asked of a refused pool, yet every allotted worker has somewhere to run
    assert all(decision.targets.get(k, 0) == 0 for k in refused)
    assert decision.total == decision.wanted
    if len(refused_zones) == len(ZONES):
        assert all(k.startswith("on-demand:") for k, n in decision.targets.items() if n > 0)


# -- scenarios -----------------------------------------------------------------------------------------------------


def test_three_jobs_spread_over_several_pools_cheapest_first() -> None:
    # given three jobs of 4, 3 and 2 workers that may run on g5 or g4dn, with g4dn spot cheapest
    jobs = [job("a", 4, types=("g5.xlarge", "g4dn.xlarge")), job("b", 3), job("c", 2, types=("g4dn.xlarge",))]
    decision = decide_scaling(jobs, market(), FleetState(), NOW)
    # then the fleet is sized to their sum, spread across at least two spot pools, none over 40 % of it
    assert decision.total == 9
    assert len(decision.pools_in_use()) >= 2
    assert all(k.startswith("spot:") and n <= 4 for k, n in decision.targets.items() if n)
    # and the elastic cost of getting there is reported: 9 workers launched
    assert decision.cost.delta_r == 9
    assert decision.cost.total == decision.cost.c_base + decision.cost.c_adjust * 9


def test_a_pool_that_interrupts_often_loses_to_a_slightly_dearer_calm_one() -> None:
    # given g5 spot in zone a is a little cheaper but interrupted four times an hour
    pools = [
        Pool("g5.xlarge", "us-east-1a", "spot", 0.30, 4.0, 1),
        Pool("g5.xlarge", "us-east-1b", "spot", 0.34, 0.05, 1),
        Pool("g5.xlarge", "us-east-1b", "on-demand", 1.006, 0.0, 1),
    ]
    policy = ScalingPolicy(max_pool_share=1.0)
    decision = decide_scaling([job("a", 2)], pools, FleetState(), NOW, policy)
    # then the calm pool gets the workers: its cost per useful hour is lower
    assert decision.targets == {"spot:g5.xlarge:us-east-1b": 2}


def test_running_workers_stay_in_their_pool_when_prices_move() -> None:
    # given job a runs 2 workers in zone c, which is now the dearest spot pool
    prices = {("g5.xlarge", "us-east-1c"): 0.9}
    a = job("a", 3, placed={"spot:g5.xlarge:us-east-1c": 2})
    decision = decide_scaling([a], market(prices), FleetState(targets={"spot:g5.xlarge:us-east-1c": 2}), NOW)
    # then they stay; only the third worker goes to a cheaper pool
    assert decision.targets["spot:g5.xlarge:us-east-1c"] == 2
    assert decision.total == 3


def test_a_spot_pool_that_never_filled_its_target_is_abandoned_for_the_zone_that_supplies_then_on_demand() -> None:
    # given a fleet asked for 2 g5 spot workers in each zone 10 minutes ago, and only zone a got its two
    targets = {pool_key("spot", "g5.xlarge", z): 2 for z in ZONES}
    fulfilled = {pool_key("spot", "g5.xlarge", z): 2 if z == "us-east-1a" else 0 for z in ZONES}
    fleet = FleetState(targets=targets, fulfilled=fulfilled, last_scaled_at=NOW - timedelta(minutes=10))
    a = job("a", 6, placed={pool_key("spot", "g5.xlarge", "us-east-1a"): 2})
    decision = decide_scaling([a], market(), fleet, NOW)
    # then zones b and c are marked refused and emptied
    assert decision.targets[pool_key("spot", "g5.xlarge", "us-east-1b")] == 0
    assert decision.targets[pool_key("spot", "g5.xlarge", "us-east-1c")] == 0
    assert set(decision.state.refused_until) == {pool_key("spot", "g5.xlarge", z) for z in ZONES[1:]}
    assert "refused" in decision.reason
    # and their workers are asked of zone a, which still supplies, beyond its 40 % share (shares follow supply;
    # the old rule capped it at 3 and sent the rest to on-demand: issue 14)
    zone_a = pool_key("spot", "g5.xlarge", "us-east-1a")
    assert decision.targets[zone_a] == 6
    assert not any(n for k, n in decision.targets.items() if k.startswith("on-demand:"))
    # when zone a then gives only 3 of its 6, the rest goes to on-demand
    short = replace(decision.state, fulfilled={**decision.state.fulfilled, zone_a: 3})
    a = replace(a, placed={zone_a: 3})
    later = decide_scaling([a], market(), short, NOW + timedelta(minutes=10))
    assert later.targets[zone_a] == 3
    assert sum(n for k, n in later.targets.items() if k.startswith("on-demand:")) == 3


def test_a_job_beyond_its_tenants_bound_waits_while_others_run() -> None:
    policy = ScalingPolicy(tenant_max_workers=4)
    jobs = [job("a", 3, min_workers=3), job("b", 2, min_workers=2), job("c", 2, tenant="globex", min_workers=2)]
    decision = decide_scaling(jobs, market(), FleetState(), NOW, policy)
    assert decision.allotted == {"a": 4, "b": 0, "c": 2} or decision.allotted == {"a": 3, "b": 0, "c": 2}
    assert decision.allotted["b"] == 0


def test_a_budget_limits_workers_above_the_minimum() -> None:
    # g5 spot costs about $0.33/h: a $1/h budget buys 2 or 3 workers, never the 8 asked for
    decision = decide_scaling([job("a", 8, budget=1.0)], market(), FleetState(), NOW)
    assert 1 <= decision.allotted["a"] <= 3


def test_a_job_whose_instance_types_no_pool_offers_is_reported_unplaceable() -> None:
    decision = decide_scaling([job("a", 2, types=("p5.48xlarge",))], market(), FleetState(), NOW)
    assert decision.total == 0
    assert decision.allotted["a"] == 0


def test_the_same_decision_twice_changes_nothing_the_second_time() -> None:
    # an event delivered twice: the second decision starts from the first one's state
    jobs = [job("a", 4), job("b", 2)]
    first = decide_scaling(jobs, market(), FleetState(), NOW)
    second = decide_scaling(jobs, market(), first.state, NOW + timedelta(seconds=1))
    assert second.targets == first.targets
    assert second.cost.delta_r == 0 and not second.changed


# -- deadlines, supply and learned interruption rates (issue 14) ---------------------------------------------------


def deadline_job(slack_hours: float, **kw: object) -> JobDemand:
    return job("d", 4, min_workers=2, deadline=NOW + timedelta(hours=10 + slack_hours), remaining_hours=10.0, **kw)


def all_spot_refused() -> FleetState:
    return FleetState(refused_until={pool_key("spot", "g5.xlarge", z): NOW + timedelta(minutes=10) for z in ZONES})


def test_a_job_with_slack_waits_for_spot_and_takes_on_demand_only_once_its_slack_runs_out() -> None:
    # given every g5 spot pool short of capacity
    # when the job still has 5 hours of slack, then it waits for spot (no on-demand)
    relaxed = decide_scaling([deadline_job(5)], market(), all_spot_refused(), NOW)
    assert relaxed.total == 0
    # when its slack is down to half an hour, then it takes on-demand for every worker it lacks
    urgent = decide_scaling([deadline_job(0.5)], market(), all_spot_refused(), NOW)
    assert sum(n for k, n in urgent.targets.items() if k.startswith("on-demand:")) == 4
    assert "on-demand for deadline of d" in urgent.reason


def test_on_demand_workers_move_back_to_spot_when_it_has_room_and_the_slack_allows() -> None:
    on_demand = pool_key("on-demand", "g5.xlarge", "us-east-1a")
    fleet = FleetState(targets={on_demand: 4}, fulfilled={on_demand: 4})
    # given a job running 4 on-demand workers, spot capacity back, and 2 hours of slack
    back = decide_scaling([deadline_job(2, placed={on_demand: 4})], market(), fleet, NOW)
    # then 4 spot workers are asked for while the on-demand ones keep running until replaced (make before break)
    assert sum(n for k, n in back.targets.items() if k.startswith("spot:")) == 4
    assert back.targets[on_demand] == 4
    # and once replaced, the on-demand pool is released at once (no idle hold for on-demand)
    spot = {k: n for k, n in back.targets.items() if k.startswith("spot:") and n}
    moved = decide_scaling([deadline_job(2, placed=spot)], market(), back.state, NOW + timedelta(minutes=5))
    assert moved.targets[on_demand] == 0
    # but with ten minutes of slack left they stay on on-demand
    stay = decide_scaling([deadline_job(1 / 6, placed={on_demand: 4})], market(), fleet, NOW)
    assert not any(n for k, n in stay.targets.items() if k.startswith("spot:"))


def test_interruption_rates_are_learned_from_what_the_fleet_observes() -> None:
    zone_a, zone_b = pool_key("spot", "g5.xlarge", "us-east-1a"), pool_key("spot", "g5.xlarge", "us-east-1b")
    state = observe_fleet(FleetState(), NOW, running={}, interrupted={})
    # given 10 workers in zone a for 10 hours, interrupted 20 times; zone b running as long, never interrupted
    state = observe_fleet(state, NOW + timedelta(hours=10), {zone_a: 10, zone_b: 10}, {zone_a: 20})
    pools = {p.key: p for p in market()}
    # then zone a's learned rate is far above the quoted 0.05/h, and zone b's below it
    assert learned_rate(pools[zone_a], state, ScalingPolicy()) > 0.15
    assert learned_rate(pools[zone_b], state, ScalingPolicy()) < 0.05
    # and zone a just reclaimed instances: new workers go elsewhere first
    decision = decide_scaling([job("a", 2)], market(), state, NOW + timedelta(hours=10, minutes=1))
    assert decision.targets.get(zone_a, 0) == 0 and decision.total == 2


def test_a_job_whose_slack_is_down_to_the_safety_margin_takes_spot_where_it_has_room_and_on_demand_for_the_rest() -> (
    None
):
    # given zones a and b refusing g5 spot, zone c still supplying, and a job with 45 minutes of slack
    refused = {pool_key("spot", "g5.xlarge", z): NOW + timedelta(minutes=10) for z in ZONES[:2]}
    fleet = FleetState(refused_until=refused)
    # when the safety margin is 1 hour (the slack is below it) but above the 30 minutes that pin it to on-demand
    decision = decide_scaling([deadline_job(0.75)], market(), fleet, NOW)
    # then it stops waiting: every worker it lacks is asked of the pool that still supplies, none of on-demand yet
    zone_c = pool_key("spot", "g5.xlarge", "us-east-1c")
    assert decision.targets.get(zone_c) == 4
    assert not any(n for k, n in decision.targets.items() if k.startswith("on-demand:"))
    # and with the margin at 30 minutes (the slack above it) it still waits for spot the same way
    relaxed = decide_scaling([deadline_job(0.75)], market(), fleet, NOW, ScalingPolicy(deadline_safety=timedelta(0)))
    assert relaxed.targets.get(zone_c) == 4 and "on-demand for deadline" not in relaxed.reason
    # but once zone c refuses too, the margin decides: below it on-demand fills the gap, above it the job waits
    every = all_spot_refused()
    assert sum(n for k, n in decide_scaling([deadline_job(0.75)], market(), every, NOW).targets.items()) == 4
    wide = ScalingPolicy(deadline_safety=timedelta(minutes=30))
    assert decide_scaling([deadline_job(0.75)], market(), every, NOW, wide).total == 0


def test_a_refused_pool_keeps_what_it_gave_and_those_instances_serve_the_job_before_any_launch() -> None:
    zone_a = pool_key("spot", "g5.xlarge", "us-east-1a")
    # given zone a asked for 4, gave 3 (booting, not placed yet) and so now refused; the other zones refused too
    fleet = replace(all_spot_refused(), targets={zone_a: 4}, fulfilled={zone_a: 3})
    # when a job with an hour of slack wants 4 workers
    decision = decide_scaling([deadline_job(0.75)], market(), fleet, NOW)
    # then the 3 zone a gave stay (not released by the refusal) and only the fourth comes from on-demand
    assert decision.targets[zone_a] == 3
    assert sum(n for k, n in decision.targets.items() if k.startswith("on-demand:")) == 1
    # and the decision says which job each pool's workers are for
    assert decision.placements["d"][zone_a] == 3


def test_on_demand_surplus_is_released_at_once_even_while_spot_surplus_is_held() -> None:
    spot = pool_key("spot", "g5.xlarge", "us-east-1a")
    on_demand = pool_key("on-demand", "g5.xlarge", "us-east-1a")
    # given a finished job's 2 spot and 2 on-demand workers, now idle, and a job left using 2 spot ones
    fleet = FleetState(targets={spot: 4, on_demand: 2}, fulfilled={spot: 4, on_demand: 2}, last_scaled_at=NOW)
    decision = decide_scaling([job("left", 2, placed={spot: 2})], market(), fleet, NOW)
    # then the spot surplus is held for the idle timeout but the on-demand pool goes to zero now
    assert decision.targets[spot] == 4
    assert decision.targets[on_demand] == 0
