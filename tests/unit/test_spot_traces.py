"""Spot availability traces: malformed files refused by name, and the market that replays them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ringfleet_local.spot_traces import (
    INSUFFICIENT_CAPACITY,
    TraceError,
    TraceMarket,
    load_trace,
    load_trace_dir,
    write_trace,
)

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

POOL_A = "spot:p3.2xlarge:us-west-2a"


def trace_file(folder: Path, name: str, body: object) -> Path:
    path = folder / name
    path.write_text(json.dumps(body))
    return path


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"metadata": {"gap_seconds": 600}}, "missing 'data'"),
        ({"metadata": {"gap_seconds": 600}, "data": [3, -1, 2]}, "data[1] is -1"),
        ({"metadata": {"gap_seconds": 600}, "data": [3, "two"]}, "data[1] is 'two' (str)"),
        ({"metadata": {"gap_seconds": 600}, "data": [1.5]}, "not a whole number"),
        ({"metadata": {"gap_seconds": 600}, "data": [True]}, "not an instance count"),
        ({"metadata": {"gap_seconds": 600}, "data": "16,16,0"}, "'data' must be a list"),
        ({"metadata": {"gap_seconds": 600}, "data": []}, "'data' is empty"),
        ({"data": [1, 2]}, "missing 'metadata.gap_seconds'"),
        ({"metadata": {"gap_seconds": 0}, "data": [1]}, "must be a positive number"),
        ([1, 2, 3], "expected a JSON object"),
    ],
)
def test_a_malformed_trace_is_refused_with_the_file_and_the_problem(tmp_path: Path, body: object, problem: str) -> None:
    path = trace_file(tmp_path, "us-west-2a_v100_1.json", body)
    with pytest.raises(TraceError) as refused:
        load_trace(path)
    assert str(path) in str(refused.value)
    assert problem in str(refused.value)


def test_a_file_that_is_not_json_and_a_folder_without_traces_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "us-west-2a_v100_1.json"
    bad.write_text("{not json")
    with pytest.raises(TraceError, match="not JSON"):
        load_trace(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TraceError, match=r"no \*\.json trace files"):
        load_trace_dir(empty)
    with pytest.raises(TraceError, match="not a folder"):
        load_trace_dir(tmp_path / "missing")


def test_a_folder_is_read_by_zone_from_the_file_names_prefix(tmp_path: Path) -> None:
    write_trace(tmp_path / "us-west-2a_v100_1.json", [1, 0], 600)
    write_trace(tmp_path / "us-west-2b_v100_1.json", [4, 4, 2], 3600)
    traces = load_trace_dir(tmp_path)
    assert sorted(traces) == ["us-west-2a", "us-west-2b"]
    assert traces["us-west-2b"].counts == (4, 4, 2) and traces["us-west-2b"].gap_seconds == 3600
    # a second file for the same zone is refused, naming both
    write_trace(tmp_path / "us-west-2a_v100_8.json", [8], 600)
    with pytest.raises(TraceError, match="second trace for zone us-west-2a"):
        load_trace_dir(tmp_path)


def test_the_market_interrupts_what_availability_no_longer_covers_and_refuses_launches_beyond_it(
    tmp_path: Path,
) -> None:
    # given zone a with 4 instances for the first hour, then 1, then none; and zone b always 2
    write_trace(tmp_path / "us-west-2a_v100_4.json", [4, 1, 0], 3600)
    write_trace(tmp_path / "us-west-2b_v100_4.json", [2], 3600)
    market = TraceMarket.from_dir(tmp_path)
    # then launching 3 of 4 in the first hour succeeds, and a fifth is refused as EC2 Fleet does
    assert market.launch(POOL_A, held=0, asked=3, at_hours=0.5).granted == 3
    refused = market.launch(POOL_A, held=3, asked=2, at_hours=0.5)
    assert refused.granted == 1 and refused.error_code == INSUFFICIENT_CAPACITY
    # and when availability drops to 1, two of the three held are reclaimed; at 0 all of them
    assert market.reclaimed(POOL_A, held=3, at_hours=1.5) == 2
    assert market.reclaimed(POOL_A, held=3, at_hours=2.5) == 3
    # past its end the trace starts over
    assert market.available(POOL_A, 3.5) == 4
    # on-demand is never short, and both markets are priced
    on_demand = "on-demand:p3.2xlarge:us-west-2a"
    assert market.launch(on_demand, held=100, asked=10, at_hours=2.5).granted == 10
    prices = {p.key: p.price_per_hour for p in market.pools({"p3.2xlarge"})}
    assert prices[on_demand] == 3.06 and 0 < prices[POOL_A] < 3.06


def test_the_repositorys_own_traces_load_and_have_multi_hour_outages() -> None:
    for folder in ("p3-16", "p3-4"):
        traces = load_trace_dir(ROOT / "bench" / "traces" / folder)
        assert sorted(traces) == ["us-east-1a", "us-east-1b", "us-east-1c"]
        worst = traces["us-east-1a"]
        longest = run = 0
        for count in worst.counts:
            run = run + 1 if count == 0 else 0
            longest = max(longest, run)
        assert longest * worst.gap_seconds >= 3 * 3600
