"""Benchmark: a training step with our DistributedOptimizer against DDP, as a ratio of medians in the same run."""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from training_worker.collectives import NativeBackend, RingBackend
from training_worker.optimizer import DistributedOptimizer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_model(width: int) -> torch.nn.Module:
    """An MLP of about 10M parameters at width 2048 (fc 1024-2048-2048-1024-1024)."""
    return torch.nn.Sequential(
        torch.nn.Linear(1024, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, width),
        torch.nn.ReLU(),
        torch.nn.Linear(width, 1024),
        torch.nn.ReLU(),
        torch.nn.Linear(1024, 1024),
    )


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: mp.Queue) -> None:
    torch.set_num_threads(args.threads)
    device = "cuda" if args.device == "cuda" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=300),
    )
    torch.manual_seed(0)
    base = build_model(args.width).to(device)
    params = sum(p.numel() for p in base.parameters())

    ddp_model = DistributedDataParallel(copy.deepcopy(base))
    ddp_opt = torch.optim.SGD(ddp_model.parameters(), lr=0.01, momentum=0.9)
    contenders = {"ddp": (ddp_model, ddp_opt)}
    ring = RingBackend()
    for name, backend in (("ring", ring), ("native", NativeBackend())):
        model = copy.deepcopy(base)
        inner = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        contenders[name] = (model, DistributedOptimizer(inner, model.parameters(), backend))  # type: ignore[assignment]

    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 1024, generator=gen).to(device)
    y = torch.randn(args.batch, 1024, generator=gen).to(device)
    timings: dict[str, list[float]] = {name: [] for name in contenders}
    for i in range(args.steps + 2):
        names = list(contenders)
        names = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
        for name in names:
            model, opt = contenders[name]
            dist.barrier()
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                timings[name].append(time.perf_counter() - start)
    ring.close()
    if rank == 0:
        out.put((params, {name: statistics.median(ts) for name, ts in timings.items()}))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__
        + " Two ranks train the same ~10M-parameter MLP three ways, interleaved step by step: DDP, our"
        " DistributedOptimizer on our ring, and on native all_reduce. Prints median step times and their ratio to"
        " DDP's (target <= 1.00)."
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--world", type=int, default=2, help="number of ranks (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per contender (default 20, quick 5)")
    parser.add_argument("--batch", type=int, default=64, help="per-rank batch (default 64)")
    parser.add_argument("--width", type=int, default=2048, help="hidden width; 2048 gives about 10M parameters")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda runs NCCL, one GPU per rank")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 5 if args.quick else 20
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, args.world, port, args, out)) for r in range(args.world)]
    for p in procs:
        p.start()
    params, medians = out.get(timeout=3600)
    for p in procs:
        p.join()
    print(f"{params / 1e6:.1f}M parameters, {args.world} ranks, batch {args.batch}/rank, {args.device}, medians:")
    for name in ("ddp", "ring", "native"):
        print(f"  {name:>7}: {medians[name] * 1e3:8.1f} ms/step   ratio to ddp {medians[name] / medians['ddp']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
