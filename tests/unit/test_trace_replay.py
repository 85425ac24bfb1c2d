"""The local cloud replaying spot availability traces: a drop below what the stack holds interrupts instances."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from moto import mock_aws

from ringfleet.local.fleet import FleetEmulator
from ringfleet.local.spot_traces import (
    INSUFFICIENT_CAPACITY,
    AvailabilityTrace,
    TraceError,
    TraceMarket,
    TraceReplay,
)

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
