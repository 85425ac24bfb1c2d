"""Whole workers driven by the control plane over RabbitMQ: Reconfigure, CheckpointNow, Stop, SIGTERM, spot notices.

Each worker is a real ``python -m training_worker`` process configured only through the environment a fleet gives it
(RINGFLEET_JOB_ID, RINGFLEET_INSTANCE_ID, RINGFLEET_BROKER_URL, RINGFLEET_CHECKPOINT_BUCKET, AWS_ENDPOINT_URL,
RINGFLEET_METADATA_URL), the commands travel through the real broker and the checkpoints land in a moto S3 server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfleet.contracts.messages import CheckpointCompleted, CheckpointNow, CheckpointRef, Heartbeat, Message, Stop
from tests.worker.broker import WorkerEvents, declare_worker_events, new_job_id, reconfigure, send
from tests.worker.conftest import BUCKET, InstanceMetadata, s3_client
from tests.worker.processes import WorkerProcess
from training_worker.checkpoint import S3CheckpointStore

pytestmark = pytest.mark.worker

A, B, C = "i-0000000000000000a", "i-0000000000000000b", "i-0000000000000000c"

#: Paced so that a test sees every step and has time to act between two of them: the agent's flags, then the
#: digits example's.
AGENT = ("--log-every", "1", "--timeout", "5")
TRAINING = ("--steps", "100000", "--step-delay", "0.02", "--global-batch", "48")


@pytest.fixture
def workers() -> Iterator[list[WorkerProcess]]:
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.kill()


def _start(
    started: list[WorkerProcess],
    tmp: Path,
    job: str,
    instance: str,
    broker_url: str,
    *extra: str,
    script: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> WorkerProcess:
    worker = WorkerProcess(
        tmp / f"{instance}.log",
        *AGENT,
        *extra,
        script=(*TRAINING, *script),
        env={"RINGFLEET_JOB_ID": job, "RINGFLEET_INSTANCE_ID": instance, **(env or {})},
        broker_url=broker_url,
    )
    started.append(worker)
    return worker


def _ready(*workers: WorkerProcess) -> None:
    # A worker's command queue is its own: what is published before it listens never reaches it.
    for w in workers:
        w.wait_for("control channel ready", timeout=60)


def _generations(worker: WorkerProcess) -> list[int]:
    return sorted({g for _, _, _, g in worker.progress()})


def test_reconfigure_forms_the_ring_and_a_new_membership_re_forms_it_without_a_restart_or_a_failure(
    tmp_path: Path, broker_url: str, workers: list[WorkerProcess]
) -> None:
    # given three workers of one job, listening for commands and not yet told who they are
    job = new_job_id("reform")
    a, b, c = (_start(workers, tmp_path, job, i, broker_url, script=("--commit-every", "4")) for i in (A, B, C))
    _ready(a, b, c)

    # when generation 1 names a and b: they form a two-rank ring and train, and c waits as a spare
    reconfigure(broker_url, job, 1, [A, B])
    a.wait_for_step(5, generation=1)
    assert b.wait_for_step(5, generation=1)[1:3] == (2, 1)
    c.wait_for("generation 1 does not include this worker: waiting as a spare")

    # when generation 2 adds c
    reconfigure(broker_url, job, 2, [A, B, C])
    # then all three train on a three-rank ring, c starting from the survivors' state rather than from step 0
    first_of_2 = [w.wait_for_step(0, generation=2) for w in (a, b, c)]
    assert [(world, rank) for _, world, rank, _ in first_of_2] == [(3, 0), (3, 1), (3, 2)]
    last_of_1 = max(step for step, _, _, generation in a.progress() if generation == 1)
    assert first_of_2[0][0] == last_of_1 + 1, "the ring re-formed at a step boundary: no step lost, none repeated"
    assert first_of_2[2][0] == first_of_2[0][0], c.output()

    # when generation 3 leaves a out
    reconfigure(broker_url, job, 3, [B, C])
    # then a ends its run cleanly, and b and c go on as ranks 0 and 1 of a two-rank ring
    assert a.finish(30) == 0
    assert "the 2 others train on" in a.output(), a.output()  # left out: it leaves, they never stop
    last_of_3 = [w.wait_for_step(first_of_2[0][0] + 5, generation=3) for w in (b, c)]
    assert [(world, rank) for _, world, rank, _ in last_of_3] == [(2, 0), (2, 1)]

    # when a Reconfigure of an older generation arrives late
    reconfigure(broker_url, job, 2, [A, B, C])
    for w in (b, c):
        w.wait_for("ignoring Reconfigure of generation 2")
    # then it changes nothing: b and c keep training in generation 3
    now = max(step for step, *_ in b.progress())
    for w in (b, c):
        w.wait_for_step(now + 3, generation=3)

    # and when the job is stopped, both finish at the same step
    send(broker_url, Stop(job_id=job, generation=3, reason="done"))
    assert [w.finish(30) for w in (b, c)] == [0, 0]
    stopped = {w.output().split("finished: stopped at step ")[1].split()[0] for w in (b, c)}
    assert len(stopped) == 1
    # and no membership change was counted as a failure
    for w in (a, b, c):
        assert "collective failed" not in w.output(), w.output()
    assert _generations(b) == [1, 2, 3] and _generations(c) == [2, 3]


def _verified_step(env: dict[str, str], job: str, step: int) -> int:
    """Loads the checkpoint of ``step`` from S3, checking every shard against its manifest; returns its step."""
    manifest, tree = S3CheckpointStore(BUCKET, job, s3_client=s3_client(env)).load(step)
    assert int(tree["trainer"]["step"]) == step
    return manifest.step


def _completed(messages: list[Message]) -> list[CheckpointCompleted]:
    return [m for m in messages if isinstance(m, CheckpointCompleted)]


def test_checkpoint_now_checkpoints_at_the_next_step_boundary_and_reports_it_beside_heartbeats(
    tmp_path: Path, broker_url: str, s3_env: dict[str, str], workers: list[WorkerProcess]
) -> None:
    # given two workers training in generation 1, with no regular checkpoint due for a long time
    declare_worker_events(broker_url)
    job = new_job_id("ckptnow")
    events = WorkerEvents(broker_url, job)
    a, b = (
        _start(
            workers,
            tmp_path,
            job,
            i,
            broker_url,
            "--checkpoint-every",
            "100000",
            "--heartbeat-every",
            "0.5",
            env=s3_env,
        )
        for i in (A, B)
    )
    _ready(a, b)
    reconfigure(broker_url, job, 1, [A, B])
    asked_at = a.wait_for_step(10, generation=1)[0]

    # when the control plane asks for a checkpoint (notice of a lost node)
    send(broker_url, CheckpointNow(job_id=job, generation=1, reason="spot-interruption"))

    # then CheckpointCompleted arrives on worker-events, marked as an emergency, from rank 0 ...
    received = events.wait_until(lambda ms: bool(_completed(ms)))
    done = _completed(received)[0]
    assert done.emergency and done.instance_id == A and done.generation == 1
    # ... taken at a step boundary soon after the command, not at the next interval
    assert asked_at <= done.step <= asked_at + 25, (asked_at, done.step)
    # and the checkpoint it names is in S3 with a manifest that verifies
    assert done.uri == f"s3://{BUCKET}/jobs/{job}/ckpt/{done.step:012d}/"
    assert _verified_step(s3_env, job, done.step) == done.step
    # and both workers keep training
    for w in (a, b):
        w.wait_for_step(done.step + 3, generation=1)

    # and both send Heartbeats with their rank, world size and progress
    def beats(ms: list[Message]) -> dict[str, list[Heartbeat]]:
        found: dict[str, list[Heartbeat]] = {A: [], B: []}
        for m in ms:
            if isinstance(m, Heartbeat):
                found[m.instance_id].append(m)
        return found

    received = events.wait_until(lambda ms: all(len(v) >= 2 for v in beats(ms).values()))
    for instance, rank in ((A, 0), (B, 1)):
        mine = beats(received)[instance]
        assert {(m.generation, m.rank, m.world_size) for m in mine} == {(1, rank, 2)}
        assert mine[-1].step > mine[0].step and mine[-1].loss is not None

    # and when the control plane later restarts the job from that checkpoint (generation 2 names it)
    ahead = a.wait_for_step(done.step + 10, generation=1)[0]
    reconfigure(broker_url, job, 2, [B, A], checkpoint=CheckpointRef(uri=done.uri, step=done.step))
    # then both ranks go back to it and train on from the step after it, with their new ranks
    assert [w.wait_for_step(0, generation=2) for w in (b, a)] == [(done.step + 1, 2, r, 2) for r in (0, 1)], ahead
    assert f"restored checkpoint step {done.step} for generation 2" in a.output()
    send(broker_url, Stop(job_id=job, generation=2, reason="done"))
    assert [w.finish(30) for w in (a, b)] == [0, 0]


def test_a_worker_told_to_go_before_it_has_a_membership_exits_at_once(
    tmp_path: Path, broker_url: str, workers: list[WorkerProcess]
) -> None:
    # given a worker waiting for its first Reconfigure
    worker = _start(workers, tmp_path, new_job_id("early"), A, broker_url)
    _ready(worker)
    # when it gets SIGTERM, then it exits cleanly without waiting for a membership that will never come
    worker.terminate()
    assert worker.finish(10) == 0
    assert "finished: stopped at step 0" in worker.output()


@pytest.mark.parametrize("notice", ["sigterm", "spot-notice"])
def test_a_leaving_worker_checkpoints_before_it_exits_and_the_survivor_waits_for_a_new_reconfigure(
    notice: str,
    tmp_path: Path,
    broker_url: str,
    s3_env: dict[str, str],
    metadata: tuple[str, type[InstanceMetadata]],
    workers: list[WorkerProcess],
) -> None:
    # given two workers training in generation 1: SIGTERM goes to rank 1 (rank 0 writes for it), the spot notice
    # is served to rank 0 (the writer itself leaves)
    declare_worker_events(broker_url)
    job = new_job_id(notice)
    events = WorkerEvents(broker_url, job)
    metadata_url, instance_metadata = metadata
    leaving_instance = B if notice == "sigterm" else A
    started = {
        i: _start(
            workers,
            tmp_path,
            job,
            i,
            broker_url,
            "--checkpoint-every",
            "100000",
            env={**s3_env, **({"RINGFLEET_METADATA_URL": metadata_url} if i == leaving_instance else {})},
        )
        for i in (A, B)
    }
    leaving, survivor = started[leaving_instance], started[A if leaving_instance == B else B]
    _ready(leaving, survivor)
    reconfigure(broker_url, job, 1, [A, B])
    leaving.wait_for_step(10, generation=1)

    # when the worker is told its instance goes away
    if notice == "sigterm":
        leaving.terminate()
    else:
        instance_metadata.notice = {"action": "terminate", "time": "2026-11-28T03:40:00Z"}

    # then it exits cleanly, at a step boundary, without waiting for anything: its state lives on in the survivor
    assert leaving.finish(30) == 0, leaving.output()
    stopped = int(leaving.output().split("finished: stopped at step ")[1].split()[0])
    assert "the 1 others train on" in leaving.output()

    # and the survivor never stops: at that very boundary it forms a ring of its own and trains on from the next step
    survivor.wait_for(f"generation 1: shrank to 1 at step {stopped}")
    assert survivor.wait_for_step(stopped + 1, generation=1)[:3] == (stopped + 1, 1, 0)
    assert survivor.proc.poll() is None and "collective failed" not in survivor.output()
    # and, now rank 0, it writes the emergency checkpoint of that step in the background: in S3, verified ...
    done = _completed(events.wait_until(lambda ms: bool(_completed(ms))))[0]
    assert (done.step, done.emergency, done.generation) == (stopped, True, 1)
    assert done.instance_id == (A if survivor is started[A] else B)
    assert _verified_step(s3_env, job, stopped) == stopped

    # when generation 2 names the survivor (as the control plane's next Reconfigure does), it re-forms and goes on
    ahead = max(step for step, *_ in survivor.progress())
    reconfigure(broker_url, job, 2, [(survivor is started[A] and A) or B])
    step, world, rank, _ = survivor.wait_for_step(0, generation=2)
    assert (world, rank) == (1, 0) and step > ahead
    send(broker_url, Stop(job_id=job, generation=2, reason="done"))
    assert survivor.finish(30) == 0


def test_a_script_stuck_in_a_step_is_ended_with_its_process_when_it_does_not_obey_a_stop(
    tmp_path: Path, broker_url: str, workers: list[WorkerProcess]
) -> None:
    # given a worker whose script is stuck inside a step (it sleeps ten minutes in it), given 3 s to obey a Stop
    job = new_job_id("stuck")
    worker = _start(
        workers, tmp_path, job, A, broker_url, script=("--step-delay", "600"), env={"RINGFLEET_STOP_GRACE": "3"}
    )
    _ready(worker)
    reconfigure(broker_url, job, 1, [A])
    worker.wait_for("group formed")
    # when its job is stopped (cancelled: the control plane frees the instance once its agent says it is idle)
    send(broker_url, Stop(job_id=job, generation=1, reason="cancelled"))
    # then the process ends, its script with it, within the grace rather than after the step's ten minutes
    assert worker.finish(30) == 1
    assert "the script did not stop within 3 s of Stop: ending this process" in worker.output()
