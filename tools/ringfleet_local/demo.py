"""`ringfleet demo`: spot-interrupted distributed training end to end on the local cloud, with a report and a plot.

What it does, in order:

1. brings the local cloud up (moto server, template.yaml's resources, the event router running the six handlers)
   and the fleet emulator, which turns every instance the fleet scaler launches into a real worker process;
2. submits a job through the client: 3 workers (at least 2) training a digits classifier on our ring all-reduce;
3. while it trains, injects what AWS does to spot fleets, every cloud event delivered twice:
   a spot interruption warning with a grace period and then the termination, and later a hard kill of another
   worker with no notice at all;
4. follows the workers and the control plane as they go and prints progress and incidents;
5. trains the same job once more, uninterrupted, on a fixed ring of 3 (same seed and global batches), and compares
   the final parameters and the held-out accuracy;
6. writes ``report.md`` (per incident: cause, time to detect and to recover, steps lost, checkpoints and backups,
   cost-model figures) and ``timeline.png`` into the output folder.

Recovery happens through the real handlers and the real worker code; the demo only injects the failures and
watches. Times to detect are measured from the injection to the handler invocation that decided on it; times to
recover from the injection to the moment the new ring had synced its state and trained on.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringfleet.contracts.training import (
    CollectiveFailed,
    GenerationJoined,
    RankLeft,
    RingShrank,
    StateSynced,
    StepTaken,
    TrainingEvent,
    TrainingFinished,
)
from ringfleet.core.jobs import Incident, Job
from ringfleet_local import warm
from ringfleet_local.cloud import DEFAULT_BROKER_URL, LocalCloud, broker_reachable, free_port
from ringfleet_local.report import ObservedIncident, RunTimeline, measure_goodput, write_report
from ringfleet_local.router import Delivery
from ringfleet_local.training_events import EventFollower

__all__ = ["FAST", "FULL", "Scenario", "ensure_broker", "run_demo"]

JOB_ID = "digits-demo"
#: The agents print every step (the report measures goodput from when each ended); the demo shows every tenth.
PRINT_EVERY = 10
TENANT = "acme"


@dataclass(frozen=True)
class Scenario:
    """How long the job trains and when the failures come. Steps are global steps of rank 0."""

    steps: int
    step_delay_s: float
    grace_s: float
    interrupt_at_step: int
    kill_at_step: int
    checkpoint_interval_steps: int
    #: In-memory commits every step: a snapshot of the digits model costs far less than a step (see
    #: bench/checkpoint_stall.py for a 10M-parameter model), and a hard kill then loses at most one step.
    commit_every: int = 1
    log_every: int = 1
    workers: int = 3
    min_workers: int = 2
    #: The share of the run's wall time that must go to steps that count (report's goodput).
    min_goodput: float = 0.97
    #: A silent peer counts as dead after this (a killed one is seen at once: its sockets close).
    peer_timeout_s: float = 5.0
    deadline_s: float = 600.0


# The short run lasts about 13 s: the second or so that re-forming after the hard kill takes is 7 % of it, hence its
# lower goodput bar (the full run, five times longer, is held to 97 %).
FAST = Scenario(
    steps=240,
    step_delay_s=0.04,
    grace_s=8,
    interrupt_at_step=40,
    kill_at_step=130,
    checkpoint_interval_steps=30,
    min_goodput=0.80,
)
FULL = Scenario(
    steps=600, step_delay_s=0.08, grace_s=20, interrupt_at_step=120, kill_at_step=360, checkpoint_interval_steps=50
)


#: While the second incident waits for the ring to be whole again, steps take this many times their pace; this close
#: to the last step, HOLD_STILL_S seconds each. The report counts neither as paused (RunTimeline.holds): they are the
#: demo's own sleeps.
HOLD_FACTOR = 2.0
HOLD_LAST_STEPS = 20
HOLD_STILL_S = 2.5


def ensure_broker(url: str = DEFAULT_BROKER_URL, wait_s: float = 60.0) -> None:
    """Starts RabbitMQ when it does not answer (as on a fresh machine), or says how to."""
    if broker_reachable(url):
        return
    server = shutil.which("rabbitmq-server")
    if server is None:
        raise SystemExit(
            "RabbitMQ does not answer on 127.0.0.1:5672 and rabbitmq-server is not installed: "
            "install it (apt-get install rabbitmq-server) or set RINGFLEET_BROKER_URL"
        )
    print("RabbitMQ is not running: starting it (rabbitmq-server -detached)", flush=True)
    subprocess.run([server, "-detached"], check=False)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if broker_reachable(url):
            return
        time.sleep(1)
    raise SystemExit(f"RabbitMQ did not come up within {wait_s:.0f} s")


# -- watching the run -----------------------------------------------------------------------------------------------


@dataclass
class _Watch:
    """Everything the demo saw, in seconds since the job was submitted (``t0``)."""

    t0: float
    #: Where every handler invocation's log goes (control-plane.log).
    out: Path
    timeline: RunTimeline = field(default_factory=RunTimeline)
    generation: int = 0
    world: int = 0
    step: int = 0
    finished: set[str] = field(default_factory=set)
    #: generation -> (when its ring synced, the step it resumed from).
    synced: dict[int, tuple[float, int]] = field(default_factory=dict)
    #: generation -> furthest step any worker reached in it before leaving or failing.
    reached: dict[int, int] = field(default_factory=dict)
    #: generation -> its world size (from the workers joining it).
    worlds: dict[int, int] = field(default_factory=dict)
    #: generation -> (when its survivors trained on without a leaving worker, the step they went on from).
    shrunk: dict[int, tuple[float, int]] = field(default_factory=dict)
    #: Deliveries to the recovery handlers, for counting the signals each incident produced.
    deliveries: list[Delivery] = field(default_factory=list)
    decisions: list[tuple[float, str, str, dict[str, Any]]] = field(default_factory=list)
    cost_lines: list[str] = field(default_factory=list)
    job_state: str = "unknown"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def rel(self, at: float) -> float:
        return at - self.t0

    def say(self, at: float, text: str) -> None:
        print(f"[{self.rel(at):6.1f}s] {text}", flush=True)


def _on_training_event(watch: _Watch, event: TrainingEvent) -> None:
    on_event = _ON_EVENT.get(type(event))
    if on_event is not None:
        on_event(watch, event)


def _on_step(watch: _Watch, event: TrainingEvent) -> None:
    assert isinstance(event, StepTaken)
    g, step = event.generation, event.step
    watch.reached[g] = max(watch.reached.get(g, 0), step)
    if event.rank != 0 or g < watch.generation:
        return
    watch.generation, watch.world, watch.step = g, event.world, step
    watch.timeline.steps.append((watch.rel(event.at), step))
    if step % PRINT_EVERY == 0:
        loss = event.loss if event.loss is not None else float("nan")
        watch.timeline.progress.append((watch.rel(event.at), step, loss, watch.world, g))
        watch.say(event.at, f"step {step:4d}  loss {loss:.4f}  world {watch.world}  generation {g}")


def _on_joined(watch: _Watch, event: TrainingEvent) -> None:
    assert isinstance(event, GenerationJoined)
    watch.worlds[event.generation] = event.world


def _on_synced(watch: _Watch, event: TrainingEvent) -> None:
    assert isinstance(event, StateSynced)
    g = event.generation
    if g in watch.synced:
        return
    watch.synced[g] = (event.at, event.step)
    watch.timeline.membership.append((watch.rel(event.at), watch.worlds.get(g, 0)))
    watch.say(event.at, f"generation {g}: the ring is formed and synced at step {event.step}")


def _on_shrank(watch: _Watch, event: TrainingEvent) -> None:
    assert isinstance(event, RingShrank)
    g = event.generation
    if g in watch.shrunk:
        return
    watch.shrunk[g] = (event.at, event.step)
    watch.timeline.membership.append((watch.rel(event.at), event.world))
    watch.say(
        event.at,
        f"generation {g}: {event.world} workers train on at once from step {event.step}, without the lost or "
        "leaving one",
    )


def _on_gone(watch: _Watch, event: TrainingEvent) -> None:
    """A worker failed or left."""
    assert isinstance(event, CollectiveFailed | RankLeft)
    g = event.generation
    ring = watch.timeline.membership
    if max(watch.synced, default=-1) == g and ring and ring[-1][1] != 0:
        ring.append((watch.rel(event.at), 0))  # the ring stopped training
    watch.reached[g] = max(watch.reached.get(g, 0), event.reached)
    if isinstance(event, CollectiveFailed):
        watch.say(
            event.at,
            f"{event.instance_id}: collective failed at step {event.reached}, rolled back to the commit "
            f"of step {event.step}",
        )


def _on_finished(watch: _Watch, event: TrainingEvent) -> None:
    watch.finished.add(event.instance_id)


#: What each kind of training event does to the watch.
_ON_EVENT: dict[type[Any], Callable[[_Watch, TrainingEvent], None]] = {
    StepTaken: _on_step,
    GenerationJoined: _on_joined,
    StateSynced: _on_synced,
    RingShrank: _on_shrank,
    CollectiveFailed: _on_gone,
    RankLeft: _on_gone,
    TrainingFinished: _on_finished,
}


def _on_delivery(watch: _Watch, delivery: Delivery) -> None:
    """Prints the control plane's decisions about the job, and keeps the fleet scaler's cost figures."""
    r = delivery.result
    with watch.lock, (watch.out / "control-plane.log").open("a") as log:
        log.write(f"--- {watch.rel(r.started_at):.2f}s {delivery.function} via {delivery.source}\n{r.logs}\n")
    if delivery.function in ("NodeRecoveryFunction", "WorkerEventsFunction"):
        with watch.lock:
            watch.deliveries.append(delivery)
    for entry in _log_entries(r.logs):
        if delivery.function == "FleetScalerFunction":
            _note_cost(watch, r.started_at, entry)
        if delivery.function != "CheckpointBackupFunction":  # the S3 sampler reports checkpoints and backups
            _note_decision(watch, delivery, entry)


def _log_entries(logs: str) -> Iterator[dict[str, Any]]:
    """The structured (JSON object) lines of a handler's logs."""
    for raw in logs.splitlines():
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict):
            yield entry


def _note_cost(watch: _Watch, at: float, entry: dict[str, Any]) -> None:
    """The fleet scaler's cost model, when a decision changed the fleet."""
    scaling = entry.get("cost")
    if not isinstance(scaling, dict) or not scaling.get("delta_r"):
        return
    line = (
        f"C = {scaling['c_base']:.2f} $/h + {scaling['c_adjust']:.2f} $ x {scaling['delta_r']} "
        f"= {scaling['c']:.2f} (targets {entry.get('targets')})"
    )
    with watch.lock:
        watch.cost_lines.append(f"- at {watch.rel(at):.1f} s: {line}")
    watch.say(at, f"fleet_scaler: {entry.get('message')}: {line}")


def _note_decision(watch: _Watch, delivery: Delivery, entry: dict[str, Any]) -> None:
    """A decision about the job; not the outcome summaries, nor what changed nothing and sent nothing."""
    if entry.get("job_id") != JOB_ID or "outcome" in entry or entry.get("level") != "INFO":
        return
    message = str(entry.get("message", ""))
    commands = entry.get("commands") or []
    if message.startswith(("ignored", "checkpoint noted", "spare added")) and not commands:
        return
    at = delivery.result.started_at
    with watch.lock:
        watch.decisions.append((at, delivery.function, message, entry))
    sent = f" -> {', '.join(commands)}" if commands else ""
    watch.say(at, f"{delivery.function}: {message}{sent}")


# -- the run ----------------------------------------------------------------------------------------------------------


def _manifest_steps(cloud: LocalCloud, bucket_ref: str) -> set[int]:
    s3, bucket = cloud.client("s3"), cloud.ctx.resolve({"Ref": bucket_ref})
    steps = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"jobs/{JOB_ID}/ckpt/"):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/manifest.json"):
                steps.add(int(obj["Key"].split("/")[-2]))
    return steps


def _agent_args(scenario: Scenario) -> Callable[[str | None, str], list[str]]:
    """The instance agents' own flags (what the job trains comes from its program, in the Reconfigure)."""

    def args(job_id: str | None, instance_id: str) -> list[str]:
        return [
            "--log-every", str(scenario.log_every),
            "--heartbeat-every", "2",
            "--timeout", str(scenario.peer_timeout_s),
            "--wait", "120",
        ]  # fmt: skip

    return args


def _training_args(scenario: Scenario, final: Path) -> dict[str, Any]:
    """The digits example's arguments: the job's hyperparameters, and the baseline's command line."""
    return {
        "steps": scenario.steps,
        "step-delay": scenario.step_delay_s,
        "commit-every": scenario.commit_every,
        "save-final": str(final),
    }


def _examples(cloud_template: str | Path) -> Path:
    return Path(cloud_template).resolve().parent / "examples" / "digits"


def _restarts(job_log: Sequence[Incident], generation: int, next_struck: int) -> list[Incident]:
    """The job's incidents that re-formed its ring (not grown it) after ``generation``, up to ``next_struck``."""
    return [i for i in job_log if i.cause in ("reconfigured", "restarted") and generation < i.generation <= next_struck]


class _Demo:
    def __init__(self, cloud: LocalCloud, scenario: Scenario, out: Path, watch: _Watch) -> None:
        from ringfleet.adapters.dynamodb import DynamoDbJobRepository
        from ringfleet.core.ports import SystemClock
        from ringfleet_local.fleet import FleetEmulator
        from ringfleet_local.pace import Pace

        self.cloud, self.scenario, self.out, self.watch = cloud, scenario, out, watch
        #: The job's seconds per step, rewritten while it trains (``_pace``).
        self.pace = Pace(out / "step-delay", scenario.step_delay_s)
        self.incidents: list[tuple[ObservedIncident, int]] = []  # with the generation it struck
        self.jobs = DynamoDbJobRepository(
            cloud.ctx.resolve({"Ref": "JobsTable"}), clock=SystemClock(), boto3_resource=cloud.ctx.resource("dynamodb")
        )

        def on_event(kind: str, info: dict[str, Any]) -> None:
            if kind == "worker-started":
                watch.say(
                    time.time(), f"fleet emulator: instance {info['instance_id']} boots a worker (pid {info['pid']})"
                )

        self.emulator = FleetEmulator(
            cloud.ctx,
            worker_args=_agent_args(scenario),
            log_dir=out / "workers",
            duplicate_events=True,
            on_event=on_event,
        )
        self.events = EventFollower(out / "workers")
        self.checkpoints: set[int] = set()
        self.backups: set[int] = set()

    def _sample(self, now: float, *, storage: bool) -> None:
        watch = self.watch
        for event in self.events.poll():
            _on_training_event(watch, event)
        if storage:
            running = len(self.emulator.running_instances())
            if not watch.timeline.fleet or watch.timeline.fleet[-1][1] != running:
                watch.timeline.fleet.append((watch.rel(now), running))
            for step in sorted(_manifest_steps(self.cloud, "CheckpointBucket") - self.checkpoints):
                self.checkpoints.add(step)
                watch.timeline.checkpoints.append((watch.rel(now), step))
                watch.say(now, f"checkpoint of step {step} in S3 (shards, then manifest)")
            for step in sorted(_manifest_steps(self.cloud, "BackupBucket") - self.backups):
                self.backups.add(step)
                watch.timeline.backups.append((watch.rel(now), step))
                watch.say(now, f"checkpoint of step {step} verified and backed up by checkpoint_backup")

    def job(self) -> Job | None:
        return self.jobs.get(JOB_ID)

    def members(self) -> dict[str, int]:
        job = self.job()
        return dict(job.members) if job else {}

    def _trained_to_the_end(self) -> bool:
        """Every member finished; or the job is final (its final checkpoint landed) and some member finished: a
        member still running then is a replacement that arrived after the last step, with nothing left to train."""
        job = self.job()
        members = set(job.members) if job else set()
        if members and members <= self.watch.finished:
            return True
        return job is not None and job.is_final and bool(self.watch.finished & members)

    def _instance_at_rank(self, rank: int) -> str | None:
        members = self.members()
        return next((i for i, r in members.items() if r == rank and i in self.emulator.instances), None)

    def run(self) -> None:
        from ringfleet_client import RingfleetClient, load_job_file

        scenario, watch = self.scenario, self.watch
        self.emulator.start()
        examples = _examples(self.cloud.template_path)
        fields = load_job_file(examples / "job.yaml")
        fields.update(
            # The path as the agents see it: they run from wherever the demo was started.
            entrypoint=["python", str(examples / "train.py")],
            # The pace is a file the demo rewrites while the job trains (see _pace); the baseline run has none.
            hyperparameters={**_training_args(scenario, self.out / "final.pt"), **self.pace.hyperparameters()},
            job_id=JOB_ID,
            tenant=TENANT,
            min_workers=scenario.min_workers,
            max_workers=scenario.workers,
            budget_usd_per_hour=20,
            checkpoint_interval_steps=scenario.checkpoint_interval_steps,
            total_steps=scenario.steps,
        )
        # As the tenant's app would: logged in as its app user (intake takes the tenant from the broker user).
        RingfleetClient(self.cloud.ctx.role_broker_url("app", TENANT)).submit(fields)
        watch.say(
            time.time(),
            f"job {JOB_ID} submitted through the client: {scenario.workers} workers (at least {scenario.min_workers}),"
            f" {scenario.steps} steps, every cloud event will be delivered twice",
        )
        deadline = time.monotonic() + scenario.deadline_s
        tick = 0
        while time.monotonic() < deadline:
            now = time.time()
            self._sample(now, storage=tick % 4 == 0)
            tick += 1
            self._inject(now)
            self._pace(now)
            if watch.finished and self._trained_to_the_end():
                self._sample(time.time(), storage=True)
                watch.say(time.time(), f"training finished at step {watch.step} on {len(watch.finished)} workers")
                return
            time.sleep(0.25)
        raise SystemExit(f"the demo did not finish within {scenario.deadline_s:.0f} s; worker logs: {self.out}/workers")

    def _pace(self, now: float) -> None:
        """Slows training while the second incident waits for the ring to be whole again (its replacement joins
        later on a busy machine): HOLD_FACTOR times the pace, still normal steps for the report; and holds it nearly
        still near the last step, so that the run never ends before both incidents were struck."""
        scenario, watch = self.scenario, self.watch
        waiting = len(self.incidents) == 1 and watch.step >= scenario.kill_at_step
        delay = scenario.step_delay_s * (HOLD_FACTOR if waiting else 1.0)
        if waiting and watch.step >= scenario.steps - HOLD_LAST_STEPS:
            delay = HOLD_STILL_S
        if delay == self.pace.seconds:
            return
        if delay > scenario.step_delay_s:
            watch.say(now, f"holding training at {delay:.2f} s per step until the ring is whole again")
        self.pace.set(delay)
        watch.timeline.holds.append((watch.rel(now), delay - scenario.step_delay_s))

    def _inject(self, now: float) -> None:
        scenario, watch = self.scenario, self.watch
        if not self.incidents and watch.step >= scenario.interrupt_at_step:
            victim = self._instance_at_rank(watch.world - 1)
            if victim is not None:
                watch.say(
                    now,
                    f"INCIDENT 1: spot interruption warning for {victim} (rank {watch.world - 1}), "
                    f"{scenario.grace_s:.0f} s grace, then termination",
                )
                self.incidents.append((ObservedIncident("spot interruption", victim, watch.rel(now)), watch.generation))
                self.emulator.interrupt(victim, scenario.grace_s)
        elif (
            len(self.incidents) == 1
            and watch.step >= scenario.kill_at_step
            and watch.generation > self.incidents[0][1]
            and watch.world == scenario.workers
        ):
            victim = self._instance_at_rank(1)
            if victim is not None:
                watch.say(now, f"INCIDENT 2: hard kill of {victim} (rank 1), no notice at all")
                self.incidents.append((ObservedIncident("hard kill", victim, watch.rel(now)), watch.generation))
                self.emulator.hard_kill(victim)

    def close(self) -> None:
        self.emulator.stop()

    # -- after the run ------------------------------------------------------------------------------------------------

    def account(self) -> None:
        """Fills each incident's detection, recovery, steps lost, restarts and checkpoints from what was seen."""
        watch = self.watch
        job = self.job()
        job_log = job.incidents if job else ()
        struck = [g for _, g in self.incidents] + [10**9]
        injected = [watch.t0 + inc.injected_at for inc, _ in self.incidents] + [float("inf")]
        for n, (inc, generation) in enumerate(self.incidents):
            # Every signal and decision about it, up to the next incident: the termination comes after the grace
            # period.
            window = (injected[n], injected[n + 1])
            decisions = [(at, message) for at, _, message, _ in watch.decisions if window[0] <= at < window[1]]
            decided = [at for at, message in decisions if message.startswith(("notice", "lost without notice"))]
            if decided:
                inc.detected_at = watch.rel(min(decided))
            # The restarts this incident caused: the ring re-formed (not grown) after the generation it struck and
            # up to the one the next incident struck.
            restarts = _restarts(job_log, generation, struck[n + 1])
            inc.restarts = len(restarts)
            if restarts:
                inc.generation = restarts[0].generation
            resumed = self._recovery(inc, generation, struck[n + 1], window[0])
            # The checkpoint the new ring's state is durable from: the emergency one when notice was given.
            inc.checkpoints = self._durable_from(resumed)
            inc.signals = self._signals(inc.instance_id, window)
            inc.decisions = sum(
                1 for _, message in decisions if not message.startswith(("capacity arrived: grown", "finished"))
            )
            watch.timeline.incidents.append(inc)

    def _durable_from(self, resumed: int) -> list[int]:
        """The newest checkpoint at or before ``resumed``, if any."""
        durable = [step for step in self.checkpoints if step <= resumed]
        return [max(durable)] if durable else []

    def _recovery(self, inc: ObservedIncident, generation: int, next_struck: int, injected: float) -> int:
        """Fills when the ring struck in ``generation`` trained on again, and the steps it lost; returns the step
        it went on from (-1: it did not)."""
        watch = self.watch
        # With notice the survivors of the struck generation train on at once, without the leaving worker.
        shrunk = watch.shrunk.get(generation)
        if shrunk is not None and shrunk[0] >= injected:
            at, resumed = shrunk
            inc.recovered_at = watch.rel(at)
            inc.steps_lost = 0
            return resumed
        # Recovered once a later ring synced and trained on. It may be a newer one than the restart's: the ring can
        # grow back before the survivors' one formed, and they then join the grown ring at once.
        formed = sorted(g for g in watch.synced if generation < g <= next_struck)
        if not formed:
            return -1
        at, resumed = watch.synced[formed[0]]
        inc.recovered_at = watch.rel(at)
        inc.steps_lost = max(0, watch.reached.get(generation, 0) - resumed)
        return resumed

    def _signals(self, instance_id: str, window: tuple[float, float]) -> int:
        """Cloud events about ``instance_id`` (each sent twice) and workers' failure reports, in ``window``."""
        from ringfleet_local.router import decode_rmq

        count = 0
        for d in self.watch.deliveries:
            if not window[0] <= d.result.started_at <= window[1]:
                continue
            if d.function == "NodeRecoveryFunction":
                count += sum(1 for r in d.event.get("Records", []) if instance_id in r.get("body", ""))
            else:
                count += sum(1 for body in decode_rmq(d.event) if b'"WorkerFailed"' in body)
        return count


def _baseline(scenario: Scenario, out: Path, script: Path) -> Path:
    """The same job on a fixed ring of ``workers`` with no control plane and no failures; its final state."""
    final = out / "baseline" / "final.pt"
    args = [x for name, value in _training_args(scenario, final).items() for x in (f"--{name}", str(value))]
    uninterrupted_run(script, [*args, "--step-delay", "0"], scenario.workers, out / "baseline", scenario.steps)
    return final


def uninterrupted_run(script: Path, args: Sequence[str], workers: int, folder: Path, log_every: int = 10) -> None:
    """``script`` with ``args`` on a fixed ring of ``workers`` processes of this machine, no control plane and no
    failure (what an interrupted run is compared with); each rank's output in ``folder/rank<N>.log``. Raises
    SystemExit, naming the folder, when a rank fails."""
    from ringfleet_local.fleet import one_thread_each

    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RINGFLEET_", "AWS_"))} | one_thread_each()
    procs = []
    for rank in range(workers):
        command = ["--broker-url", "none", "--instance-id", f"baseline-{rank}", "--log-every", str(log_every)]
        command += ["--static-world", f"{rank}:{workers}:127.0.0.1:{port}", "--", "python", str(script), *args]
        procs.append(warm.start_agent(command, env=env, cwd=None, log_path=folder / f"rank{rank}.log"))
    for p in procs:
        if p.wait(timeout=300) != 0:
            raise SystemExit(f"the uninterrupted baseline run failed; see {folder}")


def _accuracy(log: Path) -> float | None:
    """The held-out accuracy the digits example's rank 0 printed at the end."""
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("held-out accuracy ")]
    return float(lines[-1].split()[-1]) if lines else None


def _compare(final: Path, baseline: Path, watch: _Watch) -> bool:
    import torch

    ours, theirs = torch.load(final, weights_only=True), torch.load(baseline, weights_only=True)
    match = ours.keys() == theirs.keys() and all(torch.allclose(ours[k], theirs[k], rtol=1e-4, atol=1e-5) for k in ours)
    watch.timeline.params_match_baseline = match
    return match


def run_demo(
    template: str = "template.yaml",
    fast: bool = False,
    out_dir: str | Path = "demo-output",
    scenario: Scenario | None = None,
) -> int:
    scenario = scenario or (FAST if fast else FULL)
    ensure_broker(os.environ.get("RINGFLEET_BROKER_URL", DEFAULT_BROKER_URL))
    out = Path(out_dir).resolve()
    shutil.rmtree(out / "workers", ignore_errors=True)
    shutil.rmtree(out / "baseline", ignore_errors=True)
    (out / "final.pt").unlink(missing_ok=True)
    (out / "control-plane.log").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    print(
        "Starting the local cloud: moto server, template.yaml's resources, the event router and its six handlers",
        flush=True,
    )
    watch = _Watch(t0=time.time(), out=out)
    watch.timeline.membership.append((0.0, 0))
    with LocalCloud(template, on_delivery=lambda d: _on_delivery(watch, d), state_dir=out / "state") as cloud:
        print(f"AWS at {cloud.endpoint}; RabbitMQ at {cloud.broker_url.rsplit('@', 1)[-1]}", flush=True)
        demo = _Demo(cloud, scenario, out, watch)
        watch.t0 = time.time()
        try:
            demo.run()
            # Let the last checkpoint's backup land before the report is written.
            until = time.monotonic() + 30
            job = demo.job()
            while (scenario.steps not in demo.backups or job is None or not job.is_final) and time.monotonic() < until:
                time.sleep(0.5)
                demo._sample(time.time(), storage=True)
                job = demo.job()
            watch.job_state = str(job.state) if job else "unknown"
            watch.say(time.time(), f"job {JOB_ID} is {watch.job_state} (its final checkpoint is its result)")
            demo.account()
        finally:
            demo.close()
        accuracies = [_accuracy(out / "workers" / f"{i}.log") for i in sorted(watch.finished)]
        watch.timeline.accuracy = next((a for a in accuracies if a is not None), None)
    print("Training the same job uninterrupted on a fixed ring of 3, for comparison", flush=True)
    baseline = _baseline(scenario, out, _examples(template) / "train.py")
    watch.timeline.baseline_accuracy = _accuracy(out / "baseline" / "rank0.log")
    final = out / "final.pt"
    if not final.exists():
        raise SystemExit(f"the job's rank 0 wrote no final state; see {out}/workers")
    match = _compare(final, baseline, watch)
    watch.timeline.cost_lines = watch.cost_lines
    md, png = write_report(watch.timeline, out, title="ringfleet demo" + (" (fast)" if fast else ""))
    print(md.read_text(), flush=True)
    print(f"Report: {md}\nTimeline: {png}", flush=True)
    return _verdict(watch.timeline, scenario, match, watch.job_state)


def _verdict(timeline: RunTimeline, scenario: Scenario, match: bool, job_state: str) -> int:
    """Checks what the demo promises and says which promise broke."""
    problems = [] if job_state == "SUCCEEDED" else [f"the job ended {job_state}, not SUCCEEDED"]
    goodput = measure_goodput(timeline.steps, holds=timeline.holds)
    if goodput is not None and goodput.ratio < scenario.min_goodput:
        problems.append(f"goodput {goodput.ratio:.1%}, at least {scenario.min_goodput:.0%} expected")
    if len(timeline.incidents) != 2:
        problems.append(f"{len(timeline.incidents)} incident(s) injected, 2 planned")
    for inc in timeline.incidents:
        if inc.restarts != 1:
            problems.append(f"{inc.cause}: {inc.restarts} restarts, exactly 1 expected despite duplicated events")
        if inc.recovered_at is None:
            problems.append(f"{inc.cause}: the job did not recover")
        limit = 0 if inc.cause == "spot interruption" else scenario.commit_every
        if inc.steps_lost is not None and inc.steps_lost > limit:
            problems.append(f"{inc.cause}: {inc.steps_lost} steps lost, at most {limit} expected")
    if not match:
        problems.append("final parameters differ from the uninterrupted run's")
    for problem in problems:
        print(f"PROBLEM: {problem}", flush=True)
    if not problems:
        print("Every incident was recovered exactly once, within its loss budget, to the same final model.", flush=True)
    return 1 if problems else 0
