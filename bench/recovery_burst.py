"""A burst of spot interruption warnings through node_recovery's handler against the moto server.

A pool is reclaimed: every node of a 1,000-node fleet (100 jobs of 10) gets its two-minute warning at once. Each
warning goes through the real handler (SQS record -> plan_recovery -> conditional save of the job and the node in
one transaction -> CheckpointNow on RabbitMQ), several handler processes in parallel as Lambda would run several
execution environments, released together once imported. Prints:

- when each job's CheckpointNow went out, from the moment the warnings were released (target: all within 30 s,
  well inside the two-minute notice);
- events/s and the latency per event (median, p99), and the same run's baseline: one DynamoDB GetItem on the same
  moto server, so the ratio says how many round trips' worth one decision costs;
- each event's own CPU time in the handler process, and the backend's share of its latency (the rest: waiting for
  moto and RabbitMQ), so that the handler's cost is told apart from the emulator's;
- the AWS calls per event by kind (target: <= 4) and the moto server's ceiling, measured in the same run: the
  GetItems per second it answers to as many clients as there are handler processes. moto is one Python process
  (one core at most); its ceiling over the calls per event is about the most events/s any handler reaches on it.

Then every job gets its emergency CheckpointCompleted and ten replacements (through the recovery use case, as the
fleet scaler places them), and the bench checks that every job ends exactly one generation later, with exactly one
Reconfigure published for it and exactly one CheckpointNow.

Needs RabbitMQ (RINGFLEET_BROKER_URL, default amqp://guest:guest@127.0.0.1:5672/).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

TARGET_CHECKPOINT_NOW_S = 30.0
TARGET_CALLS_PER_EVENT = 4.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def warning(instance_id: str, n: int) -> dict[str, Any]:
    event = json.loads((ROOT / "events/ec2_spot_interruption_warning.json").read_text())
    event["id"] = str(uuid.uuid4())
    event["detail"]["instance-id"] = instance_id
    event["resources"] = [f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}"]
    return {
        "Records": [
            {
                "messageId": str(uuid.uuid4()),
                "receiptHandle": f"r{n}",
                "body": json.dumps(event),
                "attributes": {
                    "ApproximateReceiveCount": "1",
                    "SentTimestamp": "0",
                    "SenderId": "bench",
                    "ApproximateFirstReceiveTimestamp": "0",
                },
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:recovery",
                "awsRegion": "us-east-1",
            }
        ]
    }


class Context:
    function_name = "NodeRecoveryFunction"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def load_handler(env: dict[str, str]) -> Any:
    os.environ.update(env)
    spec = importlib.util.spec_from_file_location("node_recovery_app", ROOT / "services/node_recovery/app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_round_trips() -> Counter[str]:
    """Counts this process's AWS API calls by operation (a counter bumped per call: no measurable cost)."""
    import botocore.client

    calls: Counter[str] = Counter()
    make_api_call = getattr(botocore.client.BaseClient, "_make_api_call")  # noqa: B009 (private: mypy knows it not)

    def counted(self: Any, operation: str, params: dict[str, Any]) -> Any:
        calls[operation] += 1
        return make_api_call(self, operation, params)

    setattr(botocore.client.BaseClient, "_make_api_call", counted)  # noqa: B010
    return calls


def run_worker(env: dict[str, str], events: list[dict[str, Any]], start: Any, out: Any) -> None:
    """One execution environment: imports, waits for the burst, then handles its share one at a time, timing each
    (wall and this process's CPU) and noting when each job's CheckpointNow was published."""
    app = load_handler(env)
    service = app.bootstrap.recovery_service()
    publish = service.publisher.publish
    published: dict[str, float] = {}

    def noting(commands: Any) -> None:
        publish(commands)
        for command in commands:
            if command.type == "CheckpointNow":
                published.setdefault(command.job_id, time.time())

    service.publisher.publish = noting
    calls = count_round_trips()
    context = Context()
    latencies, cpu, failures = [], [], 0
    start.wait()
    with contextlib.redirect_stdout(io.StringIO()) as sink:
        for event in events:
            sink.seek(0)
            sink.truncate()  # Powertools logs and metrics go to stdout; keep none of it
            t0, c0 = time.perf_counter(), time.process_time()
            result = app.handler(event, context)
            cpu.append(time.process_time() - c0)
            latencies.append(time.perf_counter() - t0)
            failures += len(result.get("batchItemFailures", []))
    publish.__self__.close()
    out.put((latencies, cpu, failures, calls, published))


def get_items(endpoint_env: dict[str, str], table: str, seconds: float, out: Any) -> None:
    """One client of the moto ceiling: consistent GetItems of one job, back to back, for ``seconds``."""
    os.environ.update(endpoint_env)
    import boto3

    items = boto3.resource("dynamodb").Table(table)
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        items.get_item(Key={"job_id": "burst-0000"}, ConsistentRead=True)
        n += 1
    out.put(n)


def moto_ceiling(ctx: Any, endpoint_env: dict[str, str], table: str, clients: int, seconds: float = 3.0) -> float:
    """GetItems per second the moto server answers to ``clients`` processes at once: its ceiling in this run."""
    out: Any = ctx.Queue()
    procs = [ctx.Process(target=get_items, args=(endpoint_env, table, seconds, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


@dataclass
class Burst:
    """What the handler processes measured, merged: per event, then per job."""

    latencies: list[float]
    cpu_times: list[float]
    failures: int
    calls: Counter[str]
    #: Seconds from the release of the warnings to each job's first CheckpointNow, in order.
    after_release: list[float]
    #: First warning to last handled, and the busiest environment's handler time.
    wall: float
    busy: float

    @classmethod
    def merge(cls, results: list[tuple[Any, ...]], released: float, wall: float) -> Burst:
        first_publish: dict[str, float] = {}
        for _, _, _, _, published in results:
            for job_id, at in published.items():
                first_publish[job_id] = min(at, first_publish.get(job_id, at))
        return cls(
            latencies=[x for latencies, *_ in results for x in latencies],
            cpu_times=[x for _, cpu, *_ in results for x in cpu],
            failures=sum(r[2] for r in results),
            calls=sum((r[3] for r in results), Counter()),
            after_release=sorted(at - released for at in first_publish.values()),
            wall=wall,
            busy=max(sum(r[0]) for r in results),
        )


@dataclass
class Verdict:
    """The commands and generations the burst and its follow-up left, per job."""

    checkpoint_now: Counter[str]
    reconfigures: Counter[str]
    generations: Counter[int]
    exactly_one: bool


def job_name(j: int) -> str:
    return f"burst-{j:04d}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 warnings, 100 nodes, 10 jobs: a smoke run")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--nodes-per-job", type=int, default=10)
    parser.add_argument("--processes", type=int, default=4, help="handler processes (execution environments)")
    return parser.parse_args()


def seed(jobs: Any, nodes: Any, jobs_n: int, per_job: int) -> list[str]:
    """Saves ``jobs_n`` running jobs of ``per_job`` nodes each; returns every node's instance id."""
    from tests.builders import running_job

    print(f"seeding {jobs_n} jobs x {per_job} nodes ...", flush=True)
    members: list[str] = []
    for j in range(jobs_n):
        job, job_nodes = running_job(job_name(j), members=per_job, first=1 + j * per_job)
        jobs.create(job)
        for node in job_nodes:
            nodes.put(node)
            members.append(node.instance_id)
    return members


def get_item_baseline(table: Any, rounds: int = 200) -> list[float]:
    """The same run's baseline on the same server: one GetItem round trip, ``rounds`` times."""
    base = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        table.get_item(Key={"job_id": job_name(0)})
        base.append(time.perf_counter() - t0)
    return base


def burst(ctx: Any, env: dict[str, str], members: list[str], processes: int) -> Burst:
    """Every member's warning at once, shared among ``processes`` handler processes."""
    events = [warning(member, n) for n, member in enumerate(members)]
    share = [events[i::processes] for i in range(processes)]
    out: Any = ctx.Queue()
    start = ctx.Barrier(processes + 1)
    procs = [ctx.Process(target=run_worker, args=(env, s, start, out)) for s in share]
    # Start the environments and let them import before the burst: every warning arrives at once.
    print(f"{len(events)} warnings through {processes} handler processes ...", flush=True)
    for p in procs:
        p.start()
    start.wait(timeout=300)
    released, t0 = time.time(), time.perf_counter()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return Burst.merge(results, released, wall)


def recover_all(service: Any, jobs_n: int, per_job: int) -> None:
    """Every job's emergency CheckpointCompleted, then ``per_job`` replacements, as the fleet scaler places them."""
    from ringfleet.contracts import CheckpointCompleted
    from tests.builders import instance

    for j in range(jobs_n):
        job_id = job_name(j)
        service.on_checkpoint_completed(
            CheckpointCompleted(
                job_id=job_id,
                instance_id=instance(1 + j * per_job),
                generation=1,
                step=500,
                uri=f"s3://ringfleet-checkpoints/jobs/{job_id}/ckpt/{500:012d}/",
                manifest_sha256="0" * 64,
                size_bytes=1,
                emergency=True,
            )
        )
        for r in range(per_job):
            replacement = instance(0x100000 + j * per_job + r)
            service.on_capacity_arrived(job_id, replacement, host=f"10.1.{j % 250}.{r}")


def check_one_generation(commands: list[dict[str, Any]], jobs: Any, jobs_n: int) -> Verdict:
    """Exactly one CheckpointNow and one Reconfigure per job, none for any other, every job at generation 2."""
    checkpoint_now = Counter(c["job_id"] for c in commands if c["type"] == "CheckpointNow")
    reconfigures = Counter(c["job_id"] for c in commands if c["type"] == "Reconfigure")
    generations = Counter(j.generation for j in jobs.list_active())
    names = [job_name(j) for j in range(jobs_n)]
    exactly_one = (
        all(reconfigures[n] == 1 and checkpoint_now[n] == 1 for n in names)
        and generations == Counter({2: jobs_n})
        and not set(reconfigures) - set(names)
    )
    return Verdict(checkpoint_now, reconfigures, generations, exactly_one)


def report(result: Burst, base: list[float], ceiling: float, verdict: Verdict, processes: int, jobs_n: int) -> bool:
    """Prints the figures; True when every target is met."""
    latencies, cpu_times, after_release = result.latencies, result.cpu_times, result.after_release
    rate = len(latencies) / result.busy if result.busy else float("nan")
    p50, p99 = statistics.median(latencies) * 1000, percentile(latencies, 0.99) * 1000
    base_ms = statistics.median(base) * 1000
    print()
    print(f"warnings handled        {len(latencies)} ({result.failures} failed records)")
    last = after_release[-1] if after_release else float("inf")
    median_publish = statistics.median(after_release) if after_release else float("inf")
    print(
        f"CheckpointNow out (s)   {last:8.2f}   after the warnings, for all {len(after_release)} jobs "
        f"(median job {median_publish:.2f}; target <= {TARGET_CHECKPOINT_NOW_S:.0f} of the 120 s notice)"
    )
    print(f"events/s                {rate:8.1f}   (wall, first warning to last handled: {result.wall:.1f} s)")
    print(f"latency p50 / p99 (ms)  {p50:8.2f} / {p99:.2f}")
    print(f"baseline GetItem (ms)   {base_ms:8.2f}   ratio p50/GetItem {p50 / base_ms:.1f}x")
    cpu_ms = statistics.median(cpu_times) * 1000
    backend = 1 - sum(cpu_times) / sum(latencies)
    print(
        f"handler CPU (ms)        {cpu_ms:8.2f}   per event (median; p99 {percentile(cpu_times, 0.99) * 1000:.2f}); "
        f"backend's share of the latency {backend:.0%}"
    )
    per_event = report_calls(result.calls, len(latencies), ceiling, processes)
    print(f"CheckpointNow per job   {sorted(set(verdict.checkpoint_now.values()))} (10 warnings each)")
    print(
        f"generations of the jobs {dict(verdict.generations)}; "
        f"Reconfigure per job: {sorted(set(verdict.reconfigures.values()))}"
    )
    print("exactly one new generation per job:", "yes" if verdict.exactly_one else "NO")
    return (
        verdict.exactly_one
        and result.failures == 0
        and last <= TARGET_CHECKPOINT_NOW_S
        and len(after_release) == jobs_n
        and per_event <= TARGET_CALLS_PER_EVENT
    )


def report_calls(calls: Counter[str], events: int, ceiling: float, processes: int) -> float:
    """Prints the AWS calls per event and what the moto server's ceiling allows at that many; returns the former."""
    per_event = sum(calls.values()) / events
    detail = ", ".join(f"{op} {n / events:.2f}" for op, n in sorted(calls.items()))
    print(f"AWS calls per event     {per_event:8.2f}   (target <= {TARGET_CALLS_PER_EVENT:.0f}; {detail})")
    print(
        f"moto ceiling (GetItem/s, {processes} clients) {ceiling:6.0f}   "
        f"=> about {ceiling / per_event:.0f} events/s at most, at {per_event:.1f} calls each"
    )
    return per_event


def main() -> int:
    args = parse_args()
    jobs_n = 10 if args.quick else args.jobs
    per_job = args.nodes_per_job

    from ringfleet_local.cloud import LocalCloud

    from ringfleet.adapters.commands import AmqpCommandPublisher
    from ringfleet.adapters.dynamodb import DynamoDbJobRepository, DynamoDbNodeRepository
    from ringfleet.bootstrap import Settings
    from ringfleet.core.ports import SystemClock
    from ringfleet.recovery.service import RecoveryService
    from tests.doubles import InMemoryInstanceLifecycle
    from tests.e2e.recovery_support import CommandTap

    broker = os.environ.get("RINGFLEET_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    with LocalCloud(ROOT / "template.yaml", route=False, broker_url=broker) as cloud:
        env = cloud.ctx.function_environment("NodeRecoveryFunction")
        env["RINGFLEET_BROKER_URL"] = broker
        env["POWERTOOLS_LOG_LEVEL"] = "WARNING"
        aws_env = {k: v for k, v in env.items() if k.startswith("AWS_")}
        os.environ.update(aws_env)
        import boto3

        ddb = boto3.resource("dynamodb")
        clock = SystemClock()
        nodes = DynamoDbNodeRepository(env["NODES_TABLE"], clock=clock, boto3_resource=ddb)
        jobs = DynamoDbJobRepository(env["JOBS_TABLE"], clock=clock, boto3_resource=ddb, nodes_table=env["NODES_TABLE"])
        members = seed(jobs, nodes, jobs_n, per_job)
        base = get_item_baseline(ddb.Table(env["JOBS_TABLE"]))

        tap = CommandTap(broker, "#")  # every job's commands
        ctx = mp.get_context("spawn")
        result = burst(ctx, env, members, args.processes)
        ceiling = moto_ceiling(ctx, aws_env, env["JOBS_TABLE"], args.processes)

        # Follow-up: the emergency checkpoints and the replacements, then check one new generation per job.
        service = RecoveryService(
            jobs=jobs,
            nodes=nodes,
            publisher=AmqpCommandPublisher(Settings.from_env(env).broker_url),
            fleet=InMemoryInstanceLifecycle(),
            clock=clock,
        )
        recover_all(service, jobs_n, per_job)
        service.publisher.close()  # type: ignore[attr-defined]
        verdict = check_one_generation(tap.settle(quiet=0.5), jobs, jobs_n)

    ok = report(result, base, ceiling, verdict, args.processes, jobs_n)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
