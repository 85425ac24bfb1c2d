"""The demo's report: a Markdown summary per incident and a PNG timeline (loss, world and fleet size, incidents)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Goodput", "ObservedIncident", "RunTimeline", "measure_goodput", "write_report"]


@dataclass
class ObservedIncident:
    """One injected failure and what the control plane made of it. Times are seconds since the run started."""

    cause: str
    instance_id: str
    injected_at: float
    detected_at: float | None = None
    recovered_at: float | None = None
    steps_lost: int | None = None
    restarts: int = 0
    generation: int | None = None
    checkpoints: list[int] = field(default_factory=list)
    #: Signals the control plane received about it (cloud events, each delivered twice; workers' failure reports).
    signals: int = 0
    #: Decisions they led to (saved changes of the job); the rest were recognised as already handled.
    decisions: int = 0

    @property
    def time_to_detect(self) -> float | None:
        return None if self.detected_at is None else self.detected_at - self.injected_at

    @property
    def time_to_recover(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.injected_at


@dataclass
class RunTimeline:
    """What the demo saw, sampled as it ran."""

    #: (t, step, loss, world_size, generation) from the workers' progress.
    progress: list[tuple[float, int, float, int, int]] = field(default_factory=list)
    #: (t, step) each time the ring's rank 0 finished a step, in order (a step rolled back is finished again later).
    steps: list[tuple[float, int]] = field(default_factory=list)
    #: (t, workers training in the ring): 0 from the moment a ring stops until the next one has synced.
    membership: list[tuple[float, int]] = field(default_factory=list)
    #: (t, running instances).
    fleet: list[tuple[float, int]] = field(default_factory=list)
    #: (t, step) of checkpoints written, and of those backed up.
    checkpoints: list[tuple[float, int]] = field(default_factory=list)
    backups: list[tuple[float, int]] = field(default_factory=list)
    incidents: list[ObservedIncident] = field(default_factory=list)
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    params_match_baseline: bool | None = None
    cost_lines: list[str] = field(default_factory=list)
    #: (t, seconds) from when the demo made each step sleep that much longer than its pace (0: back to the pace): its
    #: own holds while it waits for a replacement, which are not the system's badput.
    holds: list[tuple[float, float]] = field(default_factory=list)


@dataclass(frozen=True)
class Goodput:
    """Where the wall time from the first step to the last went (seconds).

    ``useful``: time of the steps that count toward the final model, each at most a few normal step times;
    ``paused``: the rest of their time, when no step ended for longer than that (detecting a failure, re-forming
    the ring, waiting for capacity, a checkpoint stall); ``replayed``: time of steps that were rolled back and
    trained again.
    """

    wall: float
    useful: float
    paused: float
    replayed: float

    @property
    def ratio(self) -> float:
        return self.useful / self.wall if self.wall > 0 else 1.0


#: A step taking longer than this many median steps was paused for the excess.
PAUSE_FACTOR = 3.0


def measure_goodput(
    steps: Sequence[tuple[float, int]],
    window: tuple[float, float] | None = None,
    holds: Sequence[tuple[float, float]] = (),
) -> Goodput | None:
    """Goodput of a run from when each step ended (``steps``: (t, step) in time order); with ``window``, only of
    the steps that ended in it (an incident's). A step begun while the demo held training (``holds``: (t, extra
    seconds a step from then on)) may take that much longer before it counts as paused: the demo's own sleep is not
    the system's badput. None with fewer than three steps."""
    if len(steps) < 3:
        return None
    last_end = {step: i for i, (_, step) in enumerate(steps)}
    counted = set(last_end.values())
    gaps = [steps[i][0] - steps[i - 1][0] for i in range(1, len(steps))]
    normal = statistics.median(gaps)
    useful = paused = replayed = 0.0
    for i, gap in enumerate(gaps, 1):
        if window is not None and not window[0] <= steps[i][0] < window[1]:
            continue
        if i not in counted:
            replayed += gap
            continue
        allowed = PAUSE_FACTOR * normal + _held(holds, steps[i - 1][0])
        useful += min(gap, allowed)
        paused += max(0.0, gap - allowed)
    return Goodput(wall=useful + paused + replayed, useful=useful, paused=paused, replayed=replayed)


def _held(holds: Sequence[tuple[float, float]], at: float) -> float:
    """The extra seconds a step begun at ``at`` was made to sleep."""
    extra = 0.0
    for since, seconds in holds:
        if since > at:
            break
        extra = seconds
    return extra


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _fmt(value: float | None, unit: str = "s") -> str:
    return "—" if value is None else f"{value:.2f} {unit}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _met(value: float | None, limit: float) -> str:
    return "not measured" if value is None else "met" if value <= limit else "MISSED"


def _goodput_lines(timeline: RunTimeline) -> list[str]:
    run = measure_goodput(timeline.steps, holds=timeline.holds)
    if run is None:
        return []
    lines = [
        "",
        "## Goodput",
        "",
        f"Goodput {_pct(run.ratio)} (target ≥ 97 %: {'met' if run.ratio >= 0.97 else 'MISSED'}): of the "
        f"{run.wall:.1f} s from the first step to the last, {run.useful:.1f} s trained steps that count toward the "
        f"final model; badput {run.paused:.2f} s paused (detection, ring re-form, waiting for capacity, checkpoint "
        f"stalls: no step for more than {PAUSE_FACTOR:g} normal steps) and {run.replayed:.2f} s of replayed steps.",
        "",
        "| # | cause | goodput in its window | paused | replayed |",
        "|---|---|---|---|---|",
    ]
    starts = [inc.injected_at for inc in timeline.incidents] + [float("inf")]
    for n, inc in enumerate(timeline.incidents):
        part = measure_goodput(timeline.steps, (starts[n], starts[n + 1]), timeline.holds)
        if part is not None:
            lines.append(
                f"| {n + 1} | {inc.cause} | {_pct(part.ratio)} | {part.paused:.2f} s | {part.replayed:.2f} s |"
            )
    lines.append("")
    return lines


def write_report(timeline: RunTimeline, out_dir: Path, *, title: str = "ringfleet demo") -> tuple[Path, Path]:
    """Writes ``report.md`` and ``timeline.png`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "timeline.png"
    _plot(timeline, png, title)
    md = out_dir / "report.md"
    lines = [f"# {title}", "", f"![timeline]({png.name})", ""]
    lines += _incident_lines(timeline)
    lines += _goodput_lines(timeline) or [""]
    lines += _result_lines(timeline)
    md.write_text("\n".join(lines) + "\n")
    return md, png


def _incident_lines(timeline: RunTimeline) -> list[str]:
    """The table of incidents, then the median time to detect and the time to recover against their targets."""
    lines = [
        "## Incidents",
        "",
        "| # | cause | instance | time to detect | time to recover | steps lost | signals received | decisions | "
        "restarts | new generation | checkpoints involved |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    backed_up = {step for _, step in timeline.backups}
    lines += [_incident_row(i, inc, backed_up) for i, inc in enumerate(timeline.incidents, 1)]
    detect = _median([i.time_to_detect for i in timeline.incidents])
    recoveries = [r for r in (i.time_to_recover for i in timeline.incidents) if r is not None]
    p50, p99 = _median(recoveries), _percentile(recoveries, 0.99)
    return [
        *lines,
        "",
        f"Median time to detect: {_fmt(detect)} (target ≤ 1 s: {_met(detect, 1.0)}); "
        f"time to recover p50 {_fmt(p50)}, p99 {_fmt(p99)} (target ≤ 1.5 s: {_met(p99, 1.5)}).",
        "",
        "Time to detect runs from the injection to the handler invocation that decided on it; time to recover from "
        "the injection until training went on: the survivors' ring trained its next step (with notice they go on at "
        "once, without the leaving worker), or the next ring had synced its state. Steps lost: the furthest step of "
        "the struck ring minus the step training went on from.",
    ]


def _incident_row(i: int, inc: ObservedIncident, backed_up: set[int]) -> str:
    ckpts = ", ".join(f"{s}{' (backed up)' if s in backed_up else ''}" for s in inc.checkpoints) or "—"
    return (
        f"| {i} | {inc.cause} | {inc.instance_id} | {_fmt(inc.time_to_detect)} | {_fmt(inc.time_to_recover)} | "
        f"{_dash(inc.steps_lost)} | {inc.signals} | {inc.decisions} | "
        f"{inc.restarts} | {_dash(inc.generation)} | {ckpts} |"
    )


def _dash(value: int | None) -> str:
    return "—" if value is None else str(value)


def _result_lines(timeline: RunTimeline) -> list[str]:
    """Checkpoints and backups, the final accuracy against the uninterrupted run's, and the cost model."""
    lines = [
        "## Checkpoints and backups",
        "",
        f"Checkpoints written at steps: {', '.join(str(s) for _, s in timeline.checkpoints) or 'none'}.",
        f"Backed up (verified, copied): {', '.join(str(s) for _, s in timeline.backups) or 'none'}.",
        "",
        "## Result",
        "",
        f"Final accuracy on held-out digits: {_pct(timeline.accuracy)}; uninterrupted run with the same global "
        f"batches: {_pct(timeline.baseline_accuracy)}.",
    ]
    if timeline.params_match_baseline is not None:
        verdict = "match" if timeline.params_match_baseline else "DO NOT match"
        lines.append(f"Final parameters {verdict} the uninterrupted run's (allclose).")
    if timeline.cost_lines:
        lines += ["", "## Cost model (C = C_base + C_adjust x ΔR)", "", *timeline.cost_lines]
    return lines


def _plot(timeline: RunTimeline, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_size) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    end = max([t for t, *_ in timeline.progress] + [t for t, _ in timeline.fleet + timeline.membership] + [0.0])
    if timeline.progress:
        t, _, loss, _, _ = zip(*timeline.progress, strict=True)
        ax_loss.plot(t, loss, color="tab:blue", marker=".", label="loss")
    # A step plot stops at its last sample: hold the last value until the end of the run.
    if timeline.membership:
        mt, mn = zip(*timeline.membership, (end, timeline.membership[-1][1]), strict=True)
        ax_size.step(mt, mn, where="post", color="tab:green", label="workers training in the ring")
    if timeline.fleet:
        ft, fn = zip(*timeline.fleet, (end, timeline.fleet[-1][1]), strict=True)
        ax_size.step(ft, fn, where="post", color="tab:gray", linestyle="--", label="fleet (running instances)")
    for tc, step in timeline.checkpoints:
        ax_loss.axvline(tc, color="tab:purple", alpha=0.35, linewidth=1)
        ax_loss.annotate(
            f"ckpt {step}",
            (tc, 1),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            rotation=90,
            va="top",
            color="tab:purple",
        )
    for tb, _ in timeline.backups:
        ax_size.axvline(tb, color="tab:olive", alpha=0.3, linewidth=1)
    colors = {"spot interruption": "tab:orange", "hard kill": "tab:red"}
    for inc in timeline.incidents:
        color = colors.get(inc.cause, "tab:red")
        for ax in (ax_loss, ax_size):
            ax.axvline(inc.injected_at, color=color, linewidth=2)
            if inc.recovered_at is not None:
                ax.axvspan(inc.injected_at, inc.recovered_at, color=color, alpha=0.12)
        ax_loss.annotate(
            inc.cause,
            (inc.injected_at, 0.9),
            xycoords=("data", "axes fraction"),
            color=color,
            fontsize=9,
            fontweight="bold",
        )
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title(f"{title}: loss, membership and incidents")
    ax_size.set_ylabel("workers")
    ax_size.set_xlabel("seconds since the job was submitted")
    ax_size.set_ylim(bottom=0)
    ax_size.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (ax_loss, ax_size):
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
