"""The examples, run as a user runs them (under the instance agent, several ranks): they train, resume and rescale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.worker.distributed import free_port
from tests.worker.processes import WorkerProcess

pytestmark = pytest.mark.integration

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
