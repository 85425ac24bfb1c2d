"""Runs a function on N real gloo processes and returns what each rank returned, or fails loudly on a hang."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import random
import socket
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch

#: The ports the worker tests' rings and stores listen on: below the kernel's ephemeral range (32768-60999 by
#: default), so that no client socket of the suite (boto3 to moto, gloo's pairs) is given one between the time a test
#: picks it and the time its rank 0 binds it, and below the product's rendezvous ports (29500 on): a port picked the
#: usual way (bind port 0) was taken in that window once in a while under pytest-xdist, and the ranks then met a
#: stranger's socket ("failed to connect/validate"). Each xdist worker has a block of its own.
PORT_BLOCK = 1500
FIRST_PORT = 20000
BLOCKS = (29500 - FIRST_PORT) // PORT_BLOCK


def free_port() -> int:
    """A port no one listens on now, from this pytest-xdist worker's block (gw0: 20000-21499, gw1: 21500-...; gw6
    shares gw0's)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = FIRST_PORT + PORT_BLOCK * ((int(worker) if worker.isdigit() else 0) % BLOCKS)
    for _ in range(200):
        port = first + random.randrange(PORT_BLOCK)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {first}..{first + PORT_BLOCK - 1}")


def _entry(fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple[Any, ...], out: Any) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=30),
        )
        result = fn(rank, world, *args)
        dist.destroy_process_group()
        # pickled by value here: multiprocessing would share tensors through memory freed when this rank exits
        out.put((rank, True, pickle.dumps(result)))
    except BaseException:
        out.put((rank, False, traceback.format_exc()))


def run_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 60.0) -> list[Any]:
    """Calls ``fn(rank, world, *args)`` in ``world`` spawned processes joined by a gloo group."""
    return _spawn(_entry, fn, world, args, timeout)


def _spawn(
    entry: Callable[..., None], fn: Callable[..., Any], world: int, args: tuple[Any, ...], timeout: float
) -> list[Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    env_before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    procs = [ctx.Process(target=entry, args=(fn, r, world, port, args, out), daemon=True) for r in range(world)]
    try:
        for p in procs:
            p.start()
        results: dict[int, Any] = {}
        try:
            for _ in range(world):
                rank, ok, value = out.get(timeout=timeout)
                if not ok:
                    raise AssertionError(f"rank {rank} failed:\n{value}")
                results[rank] = pickle.loads(value)
        except queue.Empty as e:
            raise AssertionError(f"ranks {sorted(set(range(world)) - set(results))} hung for {timeout}s") from e
        return [results[r] for r in range(world)]
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
        if env_before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env_before


def _api_entry(fn: Callable[..., Any], rank: int, world: int, port: int, args: tuple[Any, ...], out: Any) -> None:
    # The runtime reads its fixed world from the environment, as under `python -m training_worker --static-world`.
    os.environ["RINGFLEET_STATIC_WORLD"] = f"{rank}:{world}:127.0.0.1:{port}"
    os.environ["RINGFLEET_CHECKPOINT_CACHE"] = "none"
    torch.set_num_threads(1)
    try:
        import training_worker as rf

        rf.init()
        result = fn(rank, world, *args)
        out.put((rank, True, pickle.dumps(result)))
    except BaseException:
        out.put((rank, False, traceback.format_exc()))


def run_api_ranks(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 60.0) -> list[Any]:
    """Calls ``fn(rank, world, *args)`` in ``world`` spawned processes after ``training_worker.init()``: the public
    API (``rf.allreduce``, ``rf.DistributedOptimizer``, ...) on a real ring, as a user's script sees it."""
    return _spawn(_api_entry, fn, world, args, timeout)
