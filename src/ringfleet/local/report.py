"""The demo's report: a Markdown summary per incident and a PNG timeline (loss, world and fleet size, incidents)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Incident", "RunTimeline", "write_report"]


@dataclass
class Incident:
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
    #: (t, workers training in the ring): 0 from the moment a ring stops until the next one has synced.
    membership: list[tuple[float, int]] = field(default_factory=list)
    #: (t, running instances).
    fleet: list[tuple[float, int]] = field(default_factory=list)
    #: (t, step) of checkpoints written, and of those backed up.
    checkpoints: list[tuple[float, int]] = field(default_factory=list)
    backups: list[tuple[float, int]] = field(default_factory=list)
    incidents: list[Incident] = field(default_factory=list)
    accuracy: float | None = None
    baseline_accuracy: float | None = None
    params_match_baseline: bool | None = None
    cost_lines: list[str] = field(default_factory=list)


def _fmt(value: float | None, unit: str = "s") -> str:
    return "—" if value is None else f"{value:.2f} {unit}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _met(value: float | None, limit: float) -> str:
    return "not measured" if value is None else "met" if value <= limit else "MISSED"


def write_report(timeline: RunTimeline, out_dir: Path, *, title: str = "ringfleet demo") -> tuple[Path, Path]:
    """Writes ``report.md`` and ``timeline.png`` into ``out_dir``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / "timeline.png"
    _plot(timeline, png, title)
    md = out_dir / "report.md"
    lines = [
        f"# {title}",
        "",
        f"![timeline]({png.name})",
        "",
        "## Incidents",
        "",
        "| # | cause | instance | time to detect | time to recover | steps lost | signals received | decisions | "
        "restarts | new generation | checkpoints involved |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    backed_up = {step for _, step in timeline.backups}
    for i, inc in enumerate(timeline.incidents, 1):
        ckpts = ", ".join(f"{s}{' (backed up)' if s in backed_up else ''}" for s in inc.checkpoints) or "—"
        lines.append(
            f"| {i} | {inc.cause} | {inc.instance_id} | {_fmt(inc.time_to_detect)} | {_fmt(inc.time_to_recover)} | "
            f"{'—' if inc.steps_lost is None else inc.steps_lost} | {inc.signals} | {inc.decisions} | "
            f"{inc.restarts} | {'—' if inc.generation is None else inc.generation} | {ckpts} |"
        )
    detect = _median([i.time_to_detect for i in timeline.incidents])
    recover = _median([i.time_to_recover for i in timeline.incidents])
    lines += [
        "",
        f"Median time to detect: {_fmt(detect)} (target ≤ 1 s: {_met(detect, 1.0)}); "
        f"median time to recover: {_fmt(recover)} (target ≤ 10 s: {_met(recover, 10.0)}).",
        "",
        "Time to detect runs from the injection to the handler invocation that decided on it; time to recover from "
        "the injection until the next ring had synced its state and trained on. Steps lost: the furthest step of "
        "the struck ring minus the step the next one resumed from.",
        "",
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
    md.write_text("\n".join(lines) + "\n")
    return md, png


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
