"""The background copy behind every commit: a CPU snapshot of model and optimizer taken while training goes on.

On the CPU a worker thread copies the tensors (``checkpoint.snapshot``). On a GPU a thread would not help: a plain
``.to("cpu")`` from any thread is a pageable, synchronous device-to-host transfer queued behind the training's own
kernels, and measured on an H200 (``bench/commit_stall.py``) a commit of 151M parameters with AdamW cost the step
145 ms (5.8x a 30 ms step), 2.8 s at 403M. So GPU tensors are copied the way CUDA overlaps copies with compute:
into pinned host buffers (PyTorch's caching host allocator hands the same pages back commit after commit), with
``non_blocking`` copies on a stream of their own that first waits for the work already queued (the step being
committed), and an event that says when they are done. The optimizer waits on that event before it changes the
state (``Runtime.before_update``); forward and backward, which read the parameters only, run beside the copy.
"""

from __future__ import annotations

from concurrent.futures import Executor, Future
from typing import Any

import torch

from training_worker.checkpoint import snapshot

__all__ = ["copy_async"]

_streams: dict[torch.device, torch.cuda.Stream] = {}


def _cuda_device(tree: Any) -> torch.device | None:
    if isinstance(tree, torch.Tensor):
        return tree.device if tree.is_cuda else None
    children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list | tuple) else ()
    for child in children:
        found = _cuda_device(child)
        if found is not None:
            return found
    return None


def _pinned_copy(tree: Any) -> Any:
    """Enqueues the copy of every GPU tensor into a pinned host buffer (on the current stream); CPU tensors are
    copied at once."""
    if isinstance(tree, torch.Tensor):
        if not tree.is_cuda:
            return tree.detach().to("cpu", copy=True)
        host = torch.empty(tree.shape, dtype=tree.dtype, device="cpu", pin_memory=True)
        host.copy_(tree.detach(), non_blocking=True)
        tree.record_stream(torch.cuda.current_stream(tree.device))  # its memory outlives the copy, even if freed
        return host
    if isinstance(tree, dict):
        return {k: _pinned_copy(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(_pinned_copy(v) for v in tree)
    return tree


def copy_async(tree: Any, executor: Executor) -> Future[Any]:
    """A CPU snapshot of ``tree``, complete when the future is: on ``executor``'s thread for CPU tensors, by
    overlapped device-to-host copies for GPU ones (the future's thread only waits for them)."""
    device = _cuda_device(tree)
    if device is None:
        return executor.submit(snapshot, tree)
    stream = _streams.get(device)
    if stream is None:
        stream = _streams[device] = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        copied = _pinned_copy(tree)
        done = torch.cuda.Event()
        done.record(stream)

    def wait() -> Any:
        done.synchronize()
        return copied

    return executor.submit(wait)
