"""Benchmark: step-time inflation while an S3 checkpoint uploads, as a ratio of medians in the same run."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

import boto3  # noqa: E402
import torch  # noqa: E402

from bench.train_step import build_model  # noqa: E402
from training_worker.checkpoint import UPLOAD_NICENESS, AsyncCheckpointer, S3CheckpointStore, snapshot  # noqa: E402

BUCKET = "ckpt"
#: Inflation the issue allows: steps during an upload at most 5 % slower than steps without one.
TARGET = 1.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(niceness: int) -> tuple[subprocess.Popen[bytes], str]:
    """A moto server in a process of its own (as the local cloud runs it): its request handling does not take this
    process's GIL, as a real S3 would not; ``niceness`` below us, so that it takes little of training's CPU either."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "ringfleet_local.moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    if niceness > 0:
        os.setpriority(os.PRIO_PROCESS, proc.pid, niceness)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the moto server exited at start (is moto[server] installed?)")
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1)
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the moto server did not answer at {endpoint} within 30 s") from None
            time.sleep(0.1)


def _store(endpoint: str) -> S3CheckpointStore:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    s3.create_bucket(Bucket=BUCKET)
    return S3CheckpointStore(BUCKET, "checkpoint-stall", s3_client=s3)


def run(args: argparse.Namespace, endpoint: str) -> dict[str, Any]:
    """Trains the MLP alone; alternates windows of steps with no upload and steps while one is in flight."""
    torch.manual_seed(0)
    model = build_model(args.width)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x, y = torch.randn(args.batch, 1024), torch.randn(args.batch, 1024)
    saver = AsyncCheckpointer(_store(endpoint), niceness=args.niceness)

    def train_step() -> float:
        start = time.perf_counter()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - start

    def tree() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "trainer": {"step": step}}

    step = 0
    for _ in range(args.warmup):
        train_step()
        step += 1
    commit = snapshot(tree())
    idle: list[float] = []
    busy: list[float] = []
    commits: list[float] = []
    boundaries: list[float] = []
    uploads: list[float] = []
    busy_steps: list[int] = []
    rounds: list[tuple[list[float], list[float]]] = []  # each round's (steps without, steps with an upload)
    for round_ in range(args.rounds):
        # a window without an upload
        first_idle, first_busy = len(idle), len(busy)
        for _ in range(args.idle_steps):
            idle.append(train_step())
            step += 1
            start = time.perf_counter()
            commit = snapshot(tree())  # the per-step commit (TorchState.commit's in-memory snapshot)
            commits.append(time.perf_counter() - start)
        # then a checkpoint of the last commit, as the runtime starts it at the step boundary, and steps until it lands
        start = time.perf_counter()
        saver.save_async(step, 0, 1, commit, copy=args.copy)
        began = time.perf_counter()
        boundaries.append(began - start)
        thread = saver._thread
        assert thread is not None
        n = 0
        while thread.is_alive():
            busy.append(train_step())  # a step that began with the upload in flight
            step += 1
            n += 1
            commit = snapshot(tree())
        uploads.append(time.perf_counter() - began)
        saver.wait()
        if saver.error is not None:
            raise RuntimeError(f"round {round_}: the upload failed") from saver.error
        busy_steps.append(n)
        rounds.append((idle[first_idle:], busy[first_busy:]))
    assert saver.last is not None
    # What an upload costs training in all: its steps' time beyond as many steps of its round's no-upload median.
    # Robust to a slow server stretching the upload over many unaffected steps (which dilutes the ratio).
    stalls = [sum(b) - len(b) * statistics.median(i) for i, b in rounds]
    return {
        "stall": statistics.median(stalls),
        "params": sum(p.numel() for p in model.parameters()),
        "idle": statistics.median(idle),
        "busy": statistics.median(busy),
        "commit": statistics.median(commits),
        "boundary": statistics.median(boundaries),
        "upload": statistics.median(uploads),
        "busy_steps": statistics.median(busy_steps),
        "idle_n": len(idle),
        "busy_n": len(busy),
        "size": saver.last.size_bytes,
    }


def commit_cost(args: argparse.Namespace) -> tuple[float, float]:
    """Median step time without and with ``TorchState.commit()`` after every step, through the public API on a ring
    of one, in alternating windows: what the per-step commit (parameters copied in the background) costs."""
    import training_worker as rf

    os.environ.setdefault("RINGFLEET_LOG_EVERY", str(10**9))  # no progress lines in the bench's output
    rf.init()
    torch.manual_seed(0)
    model = build_model(args.width)
    opt = rf.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9), model.named_parameters())
    state = rf.elastic.TorchState(model=model, optimizer=opt)
    x, y = torch.randn(args.batch, 1024), torch.randn(args.batch, 1024)
    plain: list[float] = []
    committed: list[float] = []

    @rf.elastic.run
    def train(state: rf.elastic.TorchState) -> None:
        for round_ in range(2 * args.rounds):
            for _ in range(args.idle_steps):
                start = time.perf_counter()
                opt.zero_grad()
                torch.nn.functional.mse_loss(model(x), y).backward()
                opt.step()
                if round_ % 2:
                    state.commit()
                (committed if round_ % 2 else plain).append(time.perf_counter() - start)

    train(state)
    return statistics.median(plain), statistics.median(committed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__
        + " One process trains a ~10M-parameter MLP (SGD with momentum: model and optimizer state together make a"
        " ~84 MB checkpoint) and, in rounds, alternates a window of steps with no upload and the steps during which"
        " AsyncCheckpointer uploads the last commit to S3 (a moto server in a separate process). Prints the median"
        f" step time of each and their ratio (target <= {TARGET:.2f}); the per-step commit's in-memory snapshot as a"
        " share of a step; and what the step boundary that starts a checkpoint costs (save_async's call).",
    )
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps (a smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="upload/no-upload rounds (default 8, quick 2)")
    parser.add_argument("--idle-steps", type=int, default=None, help="steps per no-upload window (default 20, quick 8)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps first (default 3)")
    parser.add_argument("--batch", type=int, default=64, help="batch (default 64)")
    parser.add_argument("--width", type=int, default=2048, help="MLP hidden width; 2048 gives about 10M parameters")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--copy",
        action="store_true",
        help="save_async copies the commit again (its default for callers that pass live tensors); the runtime"
        " passes the commit's snapshot, so the bench does not by default",
    )
    parser.add_argument(
        "--niceness",
        type=int,
        default=UPLOAD_NICENESS,
        help="how far below training the upload thread runs (AsyncCheckpointer's niceness; 0 for the same priority)",
    )
    parser.add_argument(
        "--moto-niceness",
        type=int,
        default=19,
        help="the moto server's niceness (default 19: S3 runs elsewhere, not on the training host's cores)",
    )
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 8
    if args.idle_steps is None:
        args.idle_steps = 8 if args.quick else 20
    torch.set_num_threads(args.threads)
    proc, endpoint = start_moto(args.moto_niceness)
    try:
        r = run(args, endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    ratio = r["busy"] / r["idle"]
    print(
        f"mlp: {r['params'] / 1e6:.1f}M parameters, batch {args.batch}, {args.threads} thread(s), checkpoint"
        f" {r['size'] / 1e6:.0f} MB, {args.rounds} rounds, upload thread niceness {args.niceness}, medians:"
    )
    print(f"  step, no upload       : {r['idle'] * 1e3:8.1f} ms   ({r['idle_n']} steps)")
    print(
        f"  step, upload in flight: {r['busy'] * 1e3:8.1f} ms   ({r['busy_n']} steps)   ratio {ratio:.3f}"
        f" (target <= {TARGET:.2f})"
    )
    print(f"  upload                : {r['upload'] * 1e3:8.1f} ms   ({r['busy_steps']:.0f} steps)")
    print(
        f"  stall per checkpoint  : {r['stall'] * 1e3:8.1f} ms   {r['stall'] / r['idle']:.2f} steps' time lost in all"
        " (its steps' time beyond the no-upload median)"
    )
    print(
        f"  synchronous snapshot  : {r['commit'] * 1e3:8.1f} ms   {r['commit'] / r['idle']:.1%} of a step (a commit's"
        " copy, were it taken on the training thread)"
    )
    plain, committed = commit_cost(args)
    print(
        f"  commit every step     : {committed * 1e3:8.1f} ms/step vs {plain * 1e3:.1f} without, ratio"
        f" {committed / plain:.3f} (TorchState.commit: parameters and optimizer state copied in the background)"
    )
    print(
        f"  save_async call       : {r['boundary'] * 1e3:8.1f} ms   {r['boundary'] / r['idle']:.1%} of a step"
        f" ({'copies the commit' if args.copy else 'no second copy'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
