"""The demo report: a Markdown row per incident with its timings, and a PNG timeline that shows them."""

from __future__ import annotations

from pathlib import Path

import pytest
from ringfleet_local.report import ObservedIncident, RunTimeline, measure_goodput, write_report

pytestmark = pytest.mark.unit


def timeline() -> RunTimeline:
    progress = [(float(t), t * 2, 2.3 / (1 + t), 3 if t < 20 else 2, 1 if t < 20 else 2) for t in range(40)]
    return RunTimeline(
        progress=progress,
        steps=[(0.5 * i, i) for i in range(1, 81)],
        fleet=[(0.0, 3), (25.0, 2), (30.0, 3)],
        checkpoints=[(10.0, 20), (21.0, 42)],
        backups=[(11.0, 20), (22.5, 42)],
        incidents=[
            ObservedIncident(
                "spot interruption",
                "i-0aaaaaaaaaaaaaaa1",
                injected_at=20.0,
                detected_at=20.4,
                recovered_at=26.0,
                steps_lost=0,
                restarts=1,
                generation=2,
                checkpoints=[42],
            ),
            ObservedIncident(
                "hard kill",
                "i-0aaaaaaaaaaaaaaa2",
                injected_at=30.0,
                detected_at=30.9,
                recovered_at=37.0,
                steps_lost=3,
                restarts=1,
                generation=3,
            ),
        ],
        accuracy=0.951,
        baseline_accuracy=0.953,
        params_match_baseline=True,
        cost_lines=["- spot: $0.42/h (C_base) + $0.05 x 2 changes"],
    )


def test_report_lists_each_incident_with_its_timings_and_the_medians(tmp_path: Path) -> None:
    # given a run with two incidents
    # when the report is written
    md, png = write_report(timeline(), tmp_path)
    text = md.read_text()
    # then each incident has a row with cause, detection and recovery times and steps lost
    assert (
        "| 1 | spot interruption | i-0aaaaaaaaaaaaaaa1 | 0.40 s | 6.00 s | 0 | 0 | 0 | 1 | 2 | 42 (backed up) |" in text
    )
    assert "| 2 | hard kill | i-0aaaaaaaaaaaaaaa2 | 0.90 s | 7.00 s | 3 | 0 | 0 | 1 | 3 | — |" in text
    assert (
        "Median time to detect: 0.65 s (target ≤ 1 s: met); time to recover p50 6.50 s, p99 7.00 s "
        "(target ≤ 1.5 s: MISSED)." in text
    )
    # and the goodput of the run: its steps ended at a steady pace
    assert "Goodput 100.0 % (target ≥ 97 %: met)" in text
    assert "Final accuracy on held-out digits: 95.1 %; uninterrupted run with the same global batches: 95.3 %." in text
    assert "match the uninterrupted run's" in text and "C_base" in text
    # and the timeline is a real PNG
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000


def test_goodput_counts_steps_that_reach_the_final_model_and_splits_the_badput() -> None:
    # given steps 1..10 every 0.1 s, then a hard kill: steps 11-12 are rolled back, the ring re-forms for 2 s and
    # trains 11..20 again at the same pace
    steps = [(0.1 * s, s) for s in range(1, 13)]
    steps += [(1.2 + 2.0 + 0.1 * (s - 10), s) for s in range(11, 21)]
    goodput = measure_goodput(steps)
    assert goodput is not None
    # then 19 gaps count (each of the 18 normal ones, and the re-formed ring's first step up to 3 normal steps),
    # the two rolled-back steps are replayed time, and the rest of the 2 s gap is a pause
    assert goodput.replayed == pytest.approx(0.2)
    assert goodput.paused == pytest.approx(2.1 - 0.3)
    assert goodput.useful == pytest.approx(0.1 * 18 + 0.3)
    assert goodput.wall == pytest.approx(steps[-1][0] - steps[0][0])
    assert goodput.ratio == pytest.approx(goodput.useful / goodput.wall)
    # and an incident's window sees only its own part
    window = measure_goodput(steps, (1.15, 10.0))
    assert window is not None and window.paused == pytest.approx(goodput.paused)
    before = measure_goodput(steps, (0.0, 1.15))
    assert before is not None and before.paused == 0 and before.replayed == pytest.approx(0.1)


def test_steps_the_demo_held_on_purpose_are_not_the_systems_pauses() -> None:
    # given steps every 0.1 s, then five steps the demo made sleep 1 s more each (it waited for a replacement)
    steps = [(0.1 * s, s) for s in range(1, 11)]
    steps += [(1.0 + 1.1 * (s - 10), s) for s in range(11, 16)]
    steps += [(6.5 + 0.1 * (s - 15), s) for s in range(16, 21)]
    held = [(0.95, 1.0), (6.45, 0.0)]
    # then with the holds known, none of it is paused; without them, each held step counts as a pause
    assert measure_goodput(steps, holds=held).paused == pytest.approx(0.0)  # type: ignore[union-attr]
    assert measure_goodput(steps).paused == pytest.approx(5 * (1.1 - 0.3))  # type: ignore[union-attr]
