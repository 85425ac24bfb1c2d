"""Benchmark: a training step with our DistributedOptimizer against DDP, as a ratio of medians in the same run."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import multiprocessing as mp
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from training_worker.collectives import NativeBackend, RingBackend
from training_worker.optimizer import DEFAULT_BUCKET_BYTES, DistributedOptimizer

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("mlp", "lm")
#: Characters the LM workload's vocabulary has (the example's corpus has about this many).
LM_VOCAB = 64

Loss = Callable[[torch.nn.Module], torch.Tensor]
MakeOptimizer = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


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


def lm_example() -> ModuleType:
    """examples/lm/train.py as a module (its model class, CONTEXT), loaded by path: examples are not a package."""
    spec = importlib.util.spec_from_file_location("ringfleet_example_lm", ROOT / "examples" / "lm" / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _workload(
    name: str, args: argparse.Namespace, rank: int, device: str
) -> tuple[torch.nn.Module, Loss, MakeOptimizer]:
    """The model, this rank's loss on a fixed batch, and the optimizer every contender wraps."""
    gen = torch.Generator().manual_seed(rank)
    torch.manual_seed(0)
    if name == "mlp":
        x = torch.randn(args.batch, 1024, generator=gen).to(device)
        y = torch.randn(args.batch, 1024, generator=gen).to(device)
        return (
            build_model(args.width).to(device),
            lambda m: torch.nn.functional.mse_loss(m(x), y),
            lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9),
        )
    lm = lm_example()
    ids = torch.randint(LM_VOCAB, (args.lm_batch, lm.CONTEXT + 1), generator=gen).to(device)
    return (
        lm.CharTransformer(LM_VOCAB, d_model=args.lm_width, layers=args.lm_layers).to(device),
        lambda m: torch.nn.functional.cross_entropy(m(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten()),
        lambda ps: torch.optim.AdamW(ps, lr=1e-3),
    )


def _measure(
    name: str, args: argparse.Namespace, rank: int, device: str, ring: RingBackend
) -> tuple[int, dict[str, float]]:
    """Trains one workload three ways, interleaved step by step; (parameters, median seconds per step of each)."""
    base, loss_of, make_optimizer = _workload(name, args, rank, device)
    params = sum(p.numel() for p in base.parameters())
    ddp_model = DistributedDataParallel(copy.deepcopy(base), bucket_cap_mb=DEFAULT_BUCKET_BYTES / 2**20)
    contenders: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer]] = {
        "ddp": (ddp_model, make_optimizer(ddp_model.parameters()))
    }
    for label, backend in (("ring", ring), ("native", NativeBackend())):
        model = copy.deepcopy(base)
        inner = make_optimizer(model.parameters())
        contenders[label] = (model, DistributedOptimizer(inner, model.named_parameters(), backend=backend))

    timings: dict[str, list[float]] = {label: [] for label in contenders}
    for i in range(args.steps + 2):
        labels = list(contenders)
        labels = labels[i % len(labels) :] + labels[: i % len(labels)]  # rotate who goes first
        for label in labels:
            model, opt = contenders[label]
            dist.barrier()
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss_of(model).backward()
            opt.step()
            opt.zero_grad()
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                timings[label].append(time.perf_counter() - start)
    for _, opt in contenders.values():
        if isinstance(opt, DistributedOptimizer):
            opt.close()
    return params, {label: statistics.median(ts) for label, ts in timings.items()}


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
    ring = RingBackend()
    for name in args.workloads:
        params, medians = _measure(name, args, rank, device, ring)
        if rank == 0:
            out.put((name, params, medians))
    ring.close()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__
        + " Ranks train the same model three ways, interleaved step by step: DDP, our DistributedOptimizer on our"
        " ring, and on native all_reduce. Two workloads: a ~10M-parameter MLP, and the character-level transformer"
        " LM of examples/lm (AdamW). Prints median step times and their ratio to DDP's (target <= 1.00)."
    )
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke run)")
    parser.add_argument("--model", choices=(*WORKLOADS, "both"), default="both", help="workload(s) (default both)")
    parser.add_argument("--world", type=int, default=2, help="number of ranks (default 2)")
    parser.add_argument("--steps", type=int, default=None, help="measured steps per contender (default 20, quick 5)")
    parser.add_argument("--batch", type=int, default=64, help="MLP: per-rank batch (default 64)")
    parser.add_argument("--width", type=int, default=2048, help="MLP: hidden width; 2048 gives about 10M parameters")
    parser.add_argument("--lm-batch", type=int, default=16, help="LM: per-rank sequences of 64 characters (default 16)")
    parser.add_argument("--lm-width", type=int, default=256, help="LM: d_model (default 256; the example trains 128)")
    parser.add_argument("--lm-layers", type=int, default=4, help="LM: transformer layers (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda runs NCCL, one GPU per rank")
    args = parser.parse_args(argv)
    if args.steps is None:
        args.steps = 5 if args.quick else 20
    args.workloads = WORKLOADS if args.model == "both" else (args.model,)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, args.world, port, args, out)) for r in range(args.world)]
    for p in procs:
        p.start()
    results = [out.get(timeout=3600) for _ in args.workloads]
    for p in procs:
        p.join()
    for name, params, medians in results:
        shape = f"batch {args.batch}/rank" if name == "mlp" else f"{args.lm_batch}x64 characters/rank"
        print(f"{name}: {params / 1e6:.1f}M parameters, {args.world} ranks, {shape}, {args.device}, medians:")
        for label in ("ddp", "ring", "native"):
            ratio = medians[label] / medians["ddp"]
            print(f"  {label:>7}: {medians[label] * 1e3:8.1f} ms/step   ratio to ddp {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
