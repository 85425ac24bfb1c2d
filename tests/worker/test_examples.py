"""The examples, run as a user runs them (under the instance agent, several ranks): they train, resume and rescale."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from ringfleet.contracts import MANIFEST_NAME, checkpoint_prefix
from tests.worker.conftest import BUCKET, s3_client
from tests.worker.distributed import free_port
from tests.worker.processes import WorkerProcess, announce

pytestmark = pytest.mark.worker

LM = "examples/lm/train.py"
HOROVOD_PORT = "examples/horovod_port/train.py"
#: The same learning-rate schedule for every run of a test, whatever step it stops at.
SCHEDULE = ("--warmup", "5", "--decay-steps", "40")


def _run(
    tmp: Path, name: str, script: str, world: int, *args: str, job: str | None = None, env: dict[str, str] | None = None
) -> list[WorkerProcess]:
    """Runs ``world`` agents, one rank each, on ``script args`` to the end; fails unless every one exits 0."""
    port = free_port()
    workers = [
        WorkerProcess(
            tmp / f"{name}-{rank}.log",
            *(["--job-id", job] if job else []),
            "--instance-id",
            f"i-{rank:016x}",
            "--static-world",
            f"{rank}:{world}:127.0.0.1:{port}",
            "--checkpoint-every",
            "10",
            program=("python", script),
            script=args,
            env=env,
        )
        for rank in range(world)
    ]
    try:
        codes = [w.finish(120) for w in workers]
        assert codes == [0] * world, "\n\n".join(w.output() for w in workers)
    finally:
        for w in workers:
            w.kill()
    return workers


def _lm(tmp: Path, name: str, world: int, steps: int, *args: str, **kw: Any) -> tuple[dict[str, Any], str]:
    """The LM example's final {"model", "optimizer"} state and rank 0's output."""
    final = tmp / f"{name}.pt"
    workers = _run(tmp, name, LM, world, "--steps", str(steps), "--save-final", str(final), *args, **kw)
    return torch.load(final), workers[0].output()


def _equal(a: Any, b: Any) -> bool:
    """Bit-identical nests of dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_lm_stopped_and_resumed_from_s3_ends_bit_identical_to_an_uninterrupted_run(
    tmp_path: Path, s3_env: dict[str, str]
) -> None:
    # given two ranks that train the LM 20 steps (checkpointing every 10) and stop, then two fresh ones that go on
    _lm(tmp_path, "first-half", 2, 20, *SCHEDULE, job="lm-resumed", env=s3_env)
    resumed, log = _lm(tmp_path, "second-half", 2, 40, *SCHEDULE, job="lm-resumed", env=s3_env)
    # and two ranks of another job that train 40 steps without a break
    straight, _ = _lm(tmp_path, "straight", 2, 40, *SCHEDULE, job="lm-straight", env=s3_env)
    # then the second half resumed at step 20 and trained on to 40, and printed its held-out loss
    assert "resumed from checkpoint step 20" in log
    assert "finished: done at step 40" in log and "held-out loss" in log
    # and its weights and AdamW state (moments, step counts, the scheduled learning rate) are the straight run's bit
    # for bit
    assert _equal(resumed["model"], straight["model"])
    assert _equal(resumed["optimizer"], straight["optimizer"])
    assert resumed["optimizer"]["state"][0]["step"].item() == 40


def test_lm_trained_on_two_then_three_ranks_matches_one_rank_with_the_same_global_batches(
    tmp_path: Path, s3_env: dict[str, str]
) -> None:
    # given the LM trained 10 steps on two ranks, then resumed from S3 on three ranks to step 20, with a global batch
    # of 40 (20 + 20 sequences, then 13 + 13 + 14)
    _lm(tmp_path, "two", 2, 10, "--global-batch", "40", *SCHEDULE, job="lm-grow", env=s3_env)
    grown, log = _lm(tmp_path, "three", 3, 20, "--global-batch", "40", *SCHEDULE, job="lm-grow", env=s3_env)
    # and the same 20 steps on one rank
    alone, _ = _lm(tmp_path, "one", 1, 20, "--global-batch", "40", *SCHEDULE)
    # then the three ranks went on from the two ranks' step 10
    assert "resumed from checkpoint step 10" in log
    # and every parameter is the one-rank run's up to float rounding: same samples, same weighting of each rank's
    # share, whatever the world size
    for name, value in alone["model"].items():
        torch.testing.assert_close(grown["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # (and not trivially: training moved the weights)
    first = next(iter(alone["model"]))
    assert not torch.allclose(alone["model"][first], _initial_lm_weight(first))


def test_lm_interrupted_by_notice_and_kill_9_ends_allclose_to_an_uninterrupted_run_with_the_same_global_batches(
    tmp_path: Path, s3_env: dict[str, str]
) -> None:
    steps = 60
    # a global batch of 48 sequences: 16 per rank on three ranks, 24 on two (every share weighs the same)
    lm_args = ("--steps", str(steps), "--global-batch", "48", "--commit-every", "1", "--warmup", "5")
    job = f"lm-interrupted-{uuid.uuid4().hex[:8]}"  # its checkpoints are its own, however often the test runs
    a, b, c, d = "i-00000000000000a0a", "i-00000000000000b0b", "i-00000000000000c0c", "i-00000000000000d0d"
    discovery = tmp_path / "membership.json"
    final = tmp_path / "interrupted.pt"

    def agent(instance: str) -> WorkerProcess:
        return WorkerProcess(
            tmp_path / f"{instance}.log",
            "--job-id",
            job,
            "--instance-id",
            instance,
            "--discovery-file",
            str(discovery),
            "--timeout",
            "5",
            "--log-every",
            "1",
            "--checkpoint-every",
            "20",
            program=("python", LM),
            script=(*lm_args, "--save-final", str(final)),
            env=s3_env,
        )

    # given three agents A, B, C training the LM example as generation 1 (committing every step, checkpointing to S3),
    # and a fourth, D, started alike but left out of it: a spare, as a replacement instance waits to be placed
    announce(discovery, job, 1, [a, b, c])
    workers = {instance: agent(instance) for instance in (a, b, c, d)}
    A, B, C, D = (workers[i] for i in (a, b, c, d))
    try:
        D.wait_for("generation 1 does not include this worker: waiting as a spare", timeout=60)
        C.wait_for_step(8, generation=1, timeout=60)

        # when C is given notice (SIGTERM, as EC2 or ECS stop it)
        C.terminate()
        # then C leaves with exit status 0 at a step boundary, and A and B train on without it from the next step,
        # never stopping, without a failure, while the new rank 0 writes the emergency checkpoint of that step
        assert C.finish(60) == 0, C.output()
        left = re.search(r"finished: stopped at step (\d+)", C.output())
        assert left is not None, C.output()
        left_at = int(left[1])
        for w in (A, B):
            w.wait_for(f"generation 1: shrank to 2 at step {left_at}", timeout=30)
            w.wait_for_step(left_at + 1, generation=1, timeout=30)
            assert "collective failed" not in w.output()
        wait = time.monotonic() + 30
        while not A.output().count(f"checkpoint step {left_at} saved") and time.monotonic() < wait:
            time.sleep(0.1)
        s3_client(s3_env).head_object(Bucket=BUCKET, Key=checkpoint_prefix(job, left_at) + MANIFEST_NAME)

        # when the control plane announces generation 2 = [A, B], and once they train in it, generation 3 = [A, B, D]
        announce(discovery, job, 2, [a, b])
        A.wait_for_step(left_at + 1, generation=2, timeout=60)
        announce(discovery, job, 3, [a, b, d])
        # then D joins and takes the survivors' state (it does not start the job over)
        D.wait_for("joining generation 3 as rank 2 of 3", timeout=60)
        D.wait_for("generation 3: state synced", timeout=60)
        synced = re.search(r"generation 3: state synced from rank \d at step (\d+)", D.output())
        assert synced is not None and int(synced[1]) > left_at, D.output()
        joined_at = int(synced[1])
        D.wait_for_step(joined_at + 3, generation=3, timeout=60)

        # when B is killed with SIGKILL mid-training
        B.proc.kill()
        B.proc.wait(10)
        # then A and D notice the failed collective and roll back to their last commit (at most one step back)
        for w in (A, D):
            w.wait_for("collective failed", timeout=30)
            line = next(ln for ln in w.output().splitlines() if "collective failed" in ln)
            failed = int(line.split("collective failed at step ")[1].split()[0])
            restored = int(line.split("restored the commit of step ")[1].split(",")[0])
            assert 0 <= failed - restored <= 1 and restored > joined_at, line

        # when the control plane announces generation 4 = [A, D]
        announce(discovery, job, 4, [a, d])
        # then both finish the job with exit status 0, the last steps trained on a ring of two in generation 4
        assert [A.finish(90), D.finish(90)] == [0, 0], A.output() + D.output()
        for rank, w in enumerate((A, D)):
            assert f"finished: done at step {steps}" in w.output()
            assert w.progress()[-1] == (steps, 2, rank, 4), w.progress()[-1]
        assert "held-out loss" in A.output()
        # and every generation trained: three ranks, then two, three with D, and two again
        assert {g for _, _, _, g in A.progress()} == {1, 2, 3, 4}
    finally:
        for w in workers.values():
            w.kill()

    interrupted = torch.load(final)
    # given the same job run without a break on a fixed ring of one (another job id, same seed, batches and steps)
    straight, _ = _lm(tmp_path, "straight", 1, steps, *lm_args, job=f"{job}-straight", env=s3_env)
    # then its parameters and AdamW state equal the interrupted run's up to float rounding. Not bit for bit: each
    # world size (3, 2, 3, 2 here; 1 there) sums the global batch's loss and gradients in another order, and Adam
    # carries the last-bit differences on
    for name, value in straight["model"].items():
        torch.testing.assert_close(interrupted["model"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    assert interrupted["optimizer"]["state"].keys() == straight["optimizer"]["state"].keys()
    for index, moments in straight["optimizer"]["state"].items():
        got = interrupted["optimizer"]["state"][index]
        assert got["step"].item() == moments["step"].item() == steps
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got[key], moments[key], rtol=1e-4, atol=1e-5, msg=f"{key} of {index}")
    # and the scheduled learning rate is the same: no step was lost or taken twice
    assert _equal(interrupted["optimizer"]["param_groups"], straight["optimizer"]["param_groups"])
    # (and not trivially: training moved the weights)
    first = next(iter(straight["model"]))
    assert not torch.allclose(straight["model"][first], _initial_lm_weight(first))


def _initial_lm_weight(name: str) -> torch.Tensor:
    import runpy

    lm = runpy.run_path(LM)
    torch.manual_seed(0)
    return lm["CharTransformer"](lm["datasets"]()[2]).state_dict()[name]


def test_the_horovod_port_trains_to_the_end_on_two_ranks(tmp_path: Path) -> None:
    # given Horovod's elastic example, ported, on two ranks for two epochs
    workers = _run(tmp_path, "horovod", HOROVOD_PORT, 2, "--epochs", "2", "--log-interval", "5")
    out = workers[0].output()
    # then both epochs logged their progress, the run finished, and rank 0 printed the test-set result
    assert "Train Epoch: 1 [0/1500 (0%)]" in out and "Train Epoch: 2" in out
    assert "finished: done at step 22" in out
    assert "Test set: Average loss:" in out and "Accuracy:" in out
    assert "Test set" not in workers[1].output()
