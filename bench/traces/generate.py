"""Regenerates the bursty availability traces in this folder (our own, generated; no third-party data).

    .venv/bin/python bench/traces/generate.py

Two folders, each three zones of p3.2xlarge (V100) over 14 days at 10-minute ticks, in the published format
(see README.md here): ``p3-16/`` with up to 16 instances per zone, ``p3-4/`` with up to 4.
"""

from __future__ import annotations

from pathlib import Path

from ringfleet_local.spot_traces import generate_bursty_trace, write_trace

HERE = Path(__file__).parent
#: zone -> (chance the next spell is an outage, chance it is scarce): zone a is the worst, zone c the calmest.
ZONES = {"us-east-1a": (0.45, 0.3), "us-east-1b": (0.3, 0.3), "us-east-1c": (0.15, 0.3)}
GAP_SECONDS = 600
DAYS = 14


def main() -> None:
    for capacity in (16, 4):
        folder = HERE / f"p3-{capacity}"
        folder.mkdir(exist_ok=True)
        for i, (zone, (outage, scarce)) in enumerate(ZONES.items()):
            counts = generate_bursty_trace(
                1000 * capacity + i, capacity=capacity, hours=24 * DAYS, gap_seconds=GAP_SECONDS,
                outage=outage, scarce=scarce,
            )  # fmt: skip
            write_trace(
                folder / f"{zone}_v100_{capacity}.json", counts, GAP_SECONDS,
                generator="bench/traces/generate.py", instance_type="p3.2xlarge", capacity=capacity,
            )  # fmt: skip
            print(f"{folder.name}/{zone}: mean {sum(counts) / len(counts):.1f} of {capacity}, "
                  f"{sum(c == 0 for c in counts) / len(counts):.0%} of the time none")  # fmt: skip


if __name__ == "__main__":
    main()
