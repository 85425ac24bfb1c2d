"""Benchmark: our ring all-reduce against native dist.all_reduce on gloo, as a ratio of medians in the same run.

With ``--slots K`` the ranks are grouped K per emulated instance (or ``--slots 1,4``: one count per instance) and
the hierarchical all-reduce runs beside our flat ring and native dist.all_reduce over the same ranks: times, their
ratios to native, and the bytes that crossed instances per collective, hierarchical vs flat ring (all ranks
together, and the busiest rank's). On one machine every "instance" shares the same loopback, so the bytes, not the
times, show what the hierarchy saves on a real network. ``--device cuda`` takes NCCL (inside the instance too).
"""

from __future__ import annotations

import argparse
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

from training_worker.collectives import (
    AllreduceBackend,
    HierarchicalBackend,
    Hierarchy,
    NativeBackend,
    RingBackend,
    contiguous_instances,
)

SIZES_KIB = (64, 256, 1024, 4096, 16384, 65536)
QUICK_SIZES_KIB = (64, 1024, 16384)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _repeats(size_kib: int, quick: bool) -> int:
    base = 10 if quick else 30
    return max(5, base if size_kib <= 4096 else base // 3)


def _time_rounds(
    impls: list[AllreduceBackend], tensor: torch.Tensor, repeats: int, device: str
) -> dict[str, list[float]]:
    """Seconds of each all-reduce of ``impls`` on ``tensor``, ``repeats`` times each after two warm-up rounds (they
    set up connections and scratch buffers), every rank starting together; which goes first rotates, so that none
    always runs on a warmer cache."""
    timings: dict[str, list[float]] = {impl.name: [] for impl in impls}
    for i in range(repeats + 2):
        k = i % len(impls)
        for impl in impls[k:] + impls[:k]:
            dist.barrier()
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            impl.allreduce_(tensor, "avg")
            if device == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                timings[impl.name].append(time.perf_counter() - start)
    return timings


def _worker(
    rank: int, world: int, port: int, sizes: list[int], quick: bool, device: str, tuning: tuple[int, int], out: mp.Queue
) -> None:
    torch.set_num_threads(1)
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    ours, native = RingBackend(segment_bytes=tuning[0], small_bytes=tuning[1]), NativeBackend()
    rows = []
    for size_kib in sizes:
        tensor = torch.randn(size_kib * 1024 // 4, device=device)
        timings = _time_rounds([ours, native], tensor, _repeats(size_kib, quick), device)
        rows.append((size_kib, statistics.median(timings["ring"]), statistics.median(timings["native"])))
    if rank == 0:
        out.put(rows)
    dist.destroy_process_group()


def run(
    world: int, sizes: list[int], quick: bool, device: str, tuning: tuple[int, int]
) -> list[tuple[int, float, float]]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, sizes, quick, device, tuning, out)) for r in range(world)
    ]
    for p in procs:
        p.start()
    rows: list[tuple[int, float, float]] = out.get(timeout=1800)
    for p in procs:
        p.join()
    return rows


#: One size's figures with --slots: size (KiB), median seconds of hierarchical, flat ring and native, and the bytes
#: that crossed instances in one collective, hierarchical and flat ring: all ranks together, then the most one
#: rank sent (the busiest link).
SlotsRow = tuple[int, float, float, float, int, int, int, int]


def _slots_worker(
    rank: int,
    slots: list[int],
    port: int,
    sizes: list[int],
    quick: bool,
    device: str,
    tuning: tuple[int, int],
    out: mp.Queue,
) -> None:
    torch.set_num_threads(1)
    world = sum(slots)
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(
        backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    hierarchy = Hierarchy.of(contiguous_instances(slots))
    hierarchical = HierarchicalBackend(hierarchy, segment_bytes=tuning[0], small_bytes=tuning[1])
    ring = RingBackend(segment_bytes=tuning[0], small_bytes=tuning[1])
    native = NativeBackend()
    impls: list[AllreduceBackend] = [hierarchical, ring, native]
    mine = hierarchy.instance_of(rank)

    def ring_crossed() -> int:
        return sum(n for peer, n in ring.ring.sent_bytes.items() if hierarchy.instance_of(peer) != mine)

    rows: list[SlotsRow] = []
    for size_kib in sizes:
        tensor = torch.randn(size_kib * 1024 // 4, device=device)
        timings = _time_rounds(impls, tensor, _repeats(size_kib, quick), device)
        # One more call of each, counted: what this rank sent to ranks of other instances, summed over the ranks.
        before = (hierarchical.inter_instance_bytes, ring_crossed())
        hierarchical.allreduce_(tensor, "avg")
        ring.allreduce_(tensor, "avg")
        crossed = torch.tensor(
            [hierarchical.inter_instance_bytes - before[0], ring_crossed() - before[1]],
            dtype=torch.float64,
            device=device,
        )
        busiest = crossed.clone()
        dist.all_reduce(crossed)
        dist.all_reduce(busiest, op=dist.ReduceOp.MAX)
        rows.append(
            (
                size_kib,
                statistics.median(timings["hierarchical"]),
                statistics.median(timings["ring"]),
                statistics.median(timings["native"]),
                int(crossed[0].item()),
                int(crossed[1].item()),
                int(busiest[0].item()),
                int(busiest[1].item()),
            )
        )
    if rank == 0:
        out.put(rows)
    dist.destroy_process_group()


def run_slots(slots: list[int], sizes: list[int], quick: bool, device: str, tuning: tuple[int, int]) -> list[SlotsRow]:
    """One measurement of hierarchical / flat ring / native over ``sum(slots)`` fresh processes."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_slots_worker, args=(r, slots, port, sizes, quick, device, tuning, out))
        for r in range(sum(slots))
    ]
    for p in procs:
        p.start()
    rows: list[SlotsRow] = out.get(timeout=1800)
    for p in procs:
        p.join()
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__
        + " Prints, per world size and tensor size, median(ring) / median(native): below 1.00 means ours is faster."
        " Targets: <= 1.00 at 16-64 MiB on 2 ranks, <= 1.25 at 64 KiB-1 MiB.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats (a smoke run, ~1 minute)")
    parser.add_argument("--worlds", default="2,4", help="comma-separated world sizes (default 2,4)")
    parser.add_argument(
        "--slots",
        default=None,
        help="group the ranks K per emulated instance and compare the hierarchical all-reduce too: K (with"
        " --instances) or one count per instance, e.g. 1,4 (then --worlds is not used)",
    )
    parser.add_argument("--instances", type=int, default=2, help="emulated instances with --slots K (default 2)")
    parser.add_argument("--sizes-kib", default=None, help="comma-separated tensor sizes in KiB (default 64..65536)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda runs NCCL, one GPU per rank")
    parser.add_argument("--segment-kib", type=int, default=1024, help="pipelining segment of the ring (default 1024)")
    parser.add_argument(
        "--small-kib",
        type=int,
        default=1024,
        help="a rank sending up to this much in all exchanges whole tensors in one round instead of the ring;"
        " 0 = the ring at every size",
    )
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat the whole measurement this many times (fresh processes each) and print the median of the"
        " runs' ratios with their range: on a shared or small machine one run's ratio moves by +-20%%",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tuning = (args.segment_kib * 1024, args.small_kib * 1024)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.sizes_kib:
        sizes = [int(s) for s in args.sizes_kib.split(",")]
    else:
        sizes = list(QUICK_SIZES_KIB if args.quick else SIZES_KIB)
    runs = max(1, args.runs)
    if args.slots:
        counts = [int(k) for k in args.slots.split(",")]
        return _main_slots(counts * args.instances if len(counts) == 1 else counts, sizes, args, tuning, runs)
    spread = "  range of the runs' ratios" if runs > 1 else ""
    print(
        f"{'ranks':>5} {'size':>9} {'ring ms':>9} {'native ms':>9} {'ratio':>6}{spread}"
        f"   (medians, same run, {args.device}{f', median of {runs} runs' if runs > 1 else ''})"
    )
    for world in (int(w) for w in args.worlds.split(",")):
        per_size: dict[int, list[tuple[float, float]]] = {}
        for _ in range(runs):
            for size_kib, ring_s, native_s in run(world, sizes, args.quick, args.device, tuning):
                per_size.setdefault(size_kib, []).append((ring_s, native_s))
        for size_kib, timings in per_size.items():
            print(_row(world, size_kib, timings, spread=runs > 1))
    return 0


def _main_slots(
    slots: list[int], sizes: list[int], args: argparse.Namespace, tuning: tuple[int, int], runs: int
) -> int:
    """The --slots table: per size, the medians over the runs of each time and of each ratio to native."""
    if not slots or min(slots) < 1:
        print("error: --slots and --instances must be at least 1", file=sys.stderr)
        return 2
    quick, device = args.quick, args.device
    print(
        f"{'slots':>7} {'size':>9} {'hier ms':>9} {'ring ms':>9} {'native ms':>9} {'hier/nat':>8} {'ring/nat':>8}"
        f" {'inter MiB hier':>14} {'ring':>7} {'hier/ring':>9} {'busiest hier':>12} {'ring':>7}"
        f"   (medians, same run, {device}; inter: MiB that crossed instances in one collective, all ranks;"
        f" busiest: the most one rank sent across"
        f"{f'; median of {runs} runs' if runs > 1 else ''})"
    )
    per_size: dict[int, list[SlotsRow]] = {}
    for _ in range(runs):
        for row in run_slots(slots, sizes, quick, device, tuning):
            per_size.setdefault(row[0], []).append(row)
    layout = "+".join(str(k) for k in slots)
    for size_kib, rows in per_size.items():
        label = f"{size_kib // 1024} MiB" if size_kib >= 1024 else f"{size_kib} KiB"
        hier_s, ring_s, native_s = (statistics.median(row[i] for row in rows) for i in (1, 2, 3))
        hier_ratio = statistics.median(row[1] / row[3] for row in rows)
        ring_ratio = statistics.median(row[2] / row[3] for row in rows)
        hier_bytes, ring_bytes, hier_busiest, ring_busiest = rows[0][4:]  # the same in every run
        bytes_ratio = f"{hier_bytes / ring_bytes:.2f}" if ring_bytes else "-"
        print(
            f"{layout:>7} {label:>9} {hier_s * 1e3:>9.3f} {ring_s * 1e3:>9.3f} {native_s * 1e3:>9.3f}"
            f" {hier_ratio:>8.2f} {ring_ratio:>8.2f} {hier_bytes / 2**20:>14.2f} {ring_bytes / 2**20:>7.2f}"
            f" {bytes_ratio:>9} {hier_busiest / 2**20:>12.2f} {ring_busiest / 2**20:>7.2f}"
        )
    return 0


def _row(world: int, size_kib: int, timings: list[tuple[float, float]], *, spread: bool) -> str:
    """One line of the table: the medians over the runs of (ring, native), their ratio and, with ``spread``, the
    range of the runs' ratios."""
    label = f"{size_kib // 1024} MiB" if size_kib >= 1024 else f"{size_kib} KiB"
    ring_s = statistics.median(r for r, _ in timings)
    native_s = statistics.median(n for _, n in timings)
    ratios = [r / n for r, n in timings]
    ratio = statistics.median(ratios)
    line = f"{world:>5} {label:>9} {ring_s * 1e3:>9.3f} {native_s * 1e3:>9.3f} {ratio:>6.2f}"
    if spread:
        line += f"  {min(ratios):.2f}-{max(ratios):.2f}"
    return line


if __name__ == "__main__":
    raise SystemExit(main())
