"""The local cloud replaying spot availability traces: a drop below what the stack holds interrupts instances."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws
from ringfleet_local.fleet import FleetEmulator
from ringfleet_local.spot_traces import INSUFFICIENT_CAPACITY, AvailabilityTrace, TraceError, TraceMarket, TraceReplay

pytestmark = pytest.mark.functional

POOL = "spot:p3.2xlarge:us-east-1a"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replay(counts: tuple[int, ...], speed: float = 60.0) -> tuple[TraceReplay, Clock]:
    # ticks a minute apart: at 60x a tick passes every wall-clock second
    market = TraceMarket({"us-east-1a": AvailabilityTrace("us-east-1a", 60, counts)})
    clock = Clock()
    return TraceReplay(market, speed=speed, clock=clock), clock


def test_a_drop_in_availability_reclaims_the_newest_instances_once_with_the_notice_scaled_by_the_speed() -> None:
    # given a pool holding three instances while its trace says 3, then 1
    trace, clock = replay((3, 1, 1))
    held = {POOL: ["i-old", "i-mid", "i-new"]}
    assert trace.reclaim(held) == []
    # when the trace drops to 1 (one trace-minute later: one second at 60x)
    clock.now = 1.5
    # then the two newest go at once, each once only, with a 2-second notice (two minutes at 60x)
    assert trace.reclaim(held) == ["i-mid", "i-new"]
    assert trace.reclaim(held) == []
    assert trace.grace_s == pytest.approx(2.0)
    # and a launch beyond availability is refused as EC2 Fleet reports it
    refused = trace.launch(POOL, held=1, asked=2)
    assert refused.granted == 0 and refused.error_code == INSUFFICIENT_CAPACITY


def test_a_replay_speed_that_is_not_a_positive_number_is_refused() -> None:
    with pytest.raises(TraceError, match="positive"):
        replay((1,), speed=0)


@mock_aws
def test_the_fleet_emulator_interrupts_two_instances_at_once_when_a_trace_drops_under_what_the_stack_holds(
    tmp_path: Path,
) -> None:
    ec2 = boto3.client("ec2", region_name="us-east-1")
    ec2.run_instances(
        ImageId="ami-12c6146b",
        MinCount=3,
        MaxCount=3,
        InstanceType="p3.2xlarge",
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [{"Key": "ringfleet:stack", "Value": "rf"}, {"Key": "ringfleet:pool", "Value": POOL}],
            }
        ],
    )
    ctx = SimpleNamespace(
        stack="rf",
        region="us-east-1",
        account="123456789012",
        client=lambda s: boto3.client(s, region_name="us-east-1"),
    )
    trace, clock = replay((3, 1))
    emulator = FleetEmulator(ctx, log_dir=tmp_path, replay=trace)  # type: ignore[arg-type]
    noticed: list[tuple[str, float]] = []
    emulator.interrupt = lambda iid, grace_s, **kw: noticed.append((iid, grace_s))  # type: ignore[method-assign,assignment]
    try:
        # given the stack's three spot instances in us-east-1a, as many as the trace has
        assert emulator.replay_traces() == []
        # when availability drops to one
        clock.now = 1.5
        taken = emulator.replay_traces()
        # then two of them get the spot notice at once (scaled: two seconds at 60x), and only once
        assert len(taken) == 2 and [g for _, g in noticed] == [pytest.approx(2.0)] * 2
        assert emulator.replay_traces() == []
    finally:
        emulator.metadata.close()


@mock_aws
def test_the_local_gateway_launches_only_what_the_trace_has_and_reports_the_pool_short() -> None:
    from ringfleet_local.moto_fleet import MotoSpotFleetGateway

    trace, clock = replay((3, 3, 1))
    gateway = MotoSpotFleetGateway(
        stack="rf",
        launch_template="rf-worker",
        ec2_client=boto3.client("ec2", region_name="us-east-1"),
        capacity=trace,
    )
    on_demand = "on-demand:p3.2xlarge:us-east-1a"
    # given a pool whose trace has three instances now
    # when the scaler asks for five there (and two on demand, never short)
    gateway.set_targets({POOL: 5, on_demand: 2})
    # then three launch and the pool is short of its target by two, as an EC2 Fleet short of capacity reports it
    snapshot = gateway.snapshot()
    assert snapshot.fulfilled[POOL] == 3 and snapshot.targets[POOL] == 5
    assert snapshot.fulfilled[on_demand] == snapshot.targets[on_demand] == 2
    # and when availability has dropped to one, asking for one more launches nothing
    clock.now = 2.5
    gateway.set_targets({POOL: 4})
    assert gateway.snapshot().fulfilled[POOL] == 3 and gateway.snapshot().targets[POOL] == 4
    # and a target the pool already holds is no longer short
    gateway.set_targets({POOL: 3})
    assert gateway.snapshot().targets[POOL] == 3


def test_the_scalers_process_replays_the_same_moment_of_the_traces_from_its_environment(tmp_path: Path) -> None:
    from ringfleet_local.catalog import local_catalog
    from ringfleet_local.spot_traces import TracePriceSource, replay_from_environment, replay_from_options, write_trace

    write_trace(tmp_path / "us-east-1a_v100_1.json", [4, 0], gap_seconds=3600)
    # given the local cloud's replay, started an hour and a half of trace ago at 3600x
    ours = replay_from_options(tmp_path, speed=3600.0)
    assert ours is not None
    ours.started -= 1.5
    # when a function's process rebuilds it from the environment the local cloud gives it
    theirs = replay_from_environment(ours.environment())
    # then both read the same moment of the trace (none available in the second hour)
    assert theirs is not None and theirs.hours() == pytest.approx(ours.hours(), abs=0.01)
    assert theirs.launch(POOL, 0, 2).granted == 0
    # and the scaler's prices offer the traced type in the traces' zones, other types from the local market
    prices, catalog = TracePriceSource(theirs.market), local_catalog()
    assert {p.key for p in prices.pools(catalog, {"p3.2xlarge"})} == {POOL, "on-demand:p3.2xlarge:us-east-1a"}
    assert prices.pools(catalog, {"g5.xlarge"})
    assert replay_from_environment({}) is None


def test_in_simulated_time_the_trace_stands_still_until_its_clock_moves_and_every_process_sees_the_move(
    tmp_path: Path,
) -> None:
    from ringfleet_local.clock import FileClock
    from ringfleet_local.spot_traces import replay_from_environment, replay_from_options, write_trace

    traces = tmp_path / "traces"
    traces.mkdir()
    write_trace(traces / "us-east-1a_v100_1.json", [0] * 30 + [4], gap_seconds=60)
    # given the local cloud's replay at 60x on a clock of its own, and a function's process rebuilding it
    clock = FileClock(tmp_path / "trace-clock", start=0)
    ours = replay_from_options(traces, speed=60.0, clock=clock)
    assert ours is not None
    theirs = replay_from_environment(ours.environment())
    assert theirs is not None
    # when no one moves the clock, the outage lasts, whatever the wall clock does
    assert theirs.launch(POOL, 0, 2).granted == 0
    assert ours.hours() == theirs.hours() == 0
    # when the test moves it past the outage (30 s of the clock at 60x: half an hour of trace)
    clock.advance(30)
    # then both sides read the trace's next moment at once: room for four
    assert ours.hours() == theirs.hours() == pytest.approx(0.5)
    assert theirs.launch(POOL, 0, 2) == ours.launch(POOL, 0, 2)
    assert theirs.launch(POOL, 0, 2).granted == 2
    # and the spot notice is still the two minutes scaled by the speed, in wall-clock seconds
    assert theirs.grace_s == 2.0
