"""ringfleet's worker API for your own training script, shaped like Horovod's elastic PyTorch API.

```python
import training_worker as rf

rf.init()                                             # joins the ring (waits for its first membership)
optimizer = rf.DistributedOptimizer(torch.optim.AdamW(model.parameters()), model.named_parameters())
state = rf.elastic.TorchState(model=model, optimizer=optimizer, sampler=sampler, epoch=0)

@rf.elastic.run
def train(state): ...                                 # survives lost peers and membership changes

train(state)
```

Porting from Horovod is mostly ``import horovod.torch as hvd`` → ``import training_worker as hvd`` (the README maps
every call). Checkpoints to S3, emergency checkpoints on notice, heartbeats and the control channel belong to the
runtime (``training_worker.runtime``), never to the script.
"""

from __future__ import annotations

from typing import Any

import torch

from training_worker import elastic
from training_worker import runtime as _rt
from training_worker.agreement import agree, describe
from training_worker.optimizer import DistributedOptimizer
from training_worker.tree import broadcast_tree

__all__ = [
    "Average",
    "DistributedOptimizer",
    "Sum",
    "allreduce",
    "allreduce_",
    "broadcast_object",
    "broadcast_optimizer_state",
    "broadcast_parameters",
    "elastic",
    "init",
    "is_initialized",
    "local_rank",
    "local_size",
    "rank",
    "report",
    "size",
]

#: Reduction ops, as Horovod names them.
Average = "avg"
Sum = "sum"


def init() -> None:
    """Starts the runtime and waits until this worker is placed in a ring (at once when run alone or with
    torchrun's variables; under the instance agent, the generation that placed it): ``rank()`` and ``size()`` are
    known from then on. The ring's group forms at the first collective, or when ``@elastic.run`` starts, so a
    worker joining a running job arrives only once its model and data are loaded. Safe to call twice."""
    runtime = _rt.current()
    runtime.start()
    if runtime.ring.membership is None and not runtime.initialized:
        runtime.ring.await_membership()
    runtime.mark_initialized()
    if torch.cuda.is_available():
        # One GPU per slot, as torchrun's users write it themselves; the ring's NCCL traffic then uses this one.
        torch.cuda.set_device(local_rank())


def is_initialized() -> bool:
    return _rt.current().initialized


def rank() -> int:
    """This worker's rank in the current ring (changes when the ring re-forms)."""
    return _rt.current().ring.place().rank


def size() -> int:
    """The current ring's world size (changes when the ring re-forms)."""
    return _rt.current().ring.place().world_size


def local_rank() -> int:
    """This process's slot on its instance (one per GPU: ``init()`` has made ``cuda:local_rank()`` the current
    device), as torchrun's ``LOCAL_RANK``; 0 on an instance of one slot."""
    return _rt.current().ring.place().local_rank


def local_size() -> int:
    """How many slots this process's instance runs for the job (torchrun's ``LOCAL_WORLD_SIZE``)."""
    return _rt.current().ring.place().local_world


def _op(op: str | None, average: bool | None) -> str:
    if op is None:
        op = Sum if average is False else Average
    elif average is not None:
        raise ValueError("pass op= or the deprecated average=, not both")
    if op not in (Average, Sum):
        raise ValueError(f"op must be training_worker.Average or training_worker.Sum, not {op!r}")
    return op


def allreduce_(
    tensor: torch.Tensor, average: bool | None = None, name: str | None = None, op: str | None = None
) -> torch.Tensor:
    """Reduces ``tensor`` in place over the ring (``op=Average``, the default, or ``Sum``) and returns it.

    As Horovod's: the ranks first check that they reduce the same thing (``name``, op, dtype and shape) and raise
    ``RuntimeError`` on every rank, naming what differs, when they do not (the ring stays usable); an integer
    tensor's average is its sum divided by the world size, truncated toward zero."""
    op = _op(op, average)
    runtime = _rt.current()
    backend = runtime.ring.require_backend()
    mismatch = _rt.collective(lambda: agree("allreduce", describe(name, tensor, op), runtime.ring.group))
    if mismatch is not None:
        raise RuntimeError(mismatch)
    flat = tensor if tensor.is_contiguous() else tensor.contiguous()
    exact = not (flat.is_floating_point() or flat.is_complex())
    _rt.collective(lambda: backend.allreduce_(flat.view(-1), Sum if exact else op))  # type: ignore[arg-type]
    if exact and op == Average:
        flat.copy_(torch.div(flat, size(), rounding_mode="trunc"))
    if flat is not tensor:
        tensor.copy_(flat)
    return tensor


class _Allreduce(torch.autograd.Function):
    """Horovod's ``HorovodAllreduce``: the gradient of an all-reduce is the all-reduce of the gradient."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, op: str, name: str | None) -> torch.Tensor:
        ctx.op, ctx.name = op, name
        return allreduce_(tensor.detach().clone(), name=name, op=op)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        name = None if ctx.name is None else f"{ctx.name}.grad"
        return allreduce_(grad.detach().clone(), name=name, op=ctx.op), None, None


def allreduce(
    tensor: torch.Tensor, average: bool | None = None, name: str | None = None, op: str | None = None
) -> torch.Tensor:
    """A new tensor: ``tensor`` reduced over the ring (``op=Average``, the default, or ``Sum``); ``tensor`` is left as
    it is. Differentiable, as Horovod's: backward all-reduces the gradient with the same op."""
    op = _op(op, average)
    if tensor.requires_grad and torch.is_grad_enabled():
        result: torch.Tensor = _Allreduce.apply(tensor, op, name)
        return result
    return allreduce_(tensor.detach().clone(), name=name, op=op)


def broadcast_parameters(params: Any, root_rank: int = 0) -> None:
    """Copies ``root_rank``'s tensors into every rank's, in place: a ``state_dict()`` or ``named_parameters()``."""
    items = list(params.items()) if isinstance(params, dict) else list(params)
    _rt.current().ring.require_membership()
    tree = {name: t.detach() for name, t in items if isinstance(t, torch.Tensor)}
    received = _rt.collective(lambda: broadcast_tree(tree, root=root_rank, group=_rt.current().ring.group))
    with torch.no_grad():
        for name, t in items:
            if isinstance(t, torch.Tensor) and received[name] is not tree[name]:
                t.copy_(received[name])


def broadcast_optimizer_state(optimizer: torch.optim.Optimizer, root_rank: int = 0) -> None:
    """Makes every rank's optimizer state (moments, step counts, learning rates) ``root_rank``'s."""
    _rt.current().ring.require_membership()
    received = _rt.collective(
        lambda: broadcast_tree(optimizer.state_dict(), root=root_rank, group=_rt.current().ring.group)
    )
    if _rt.current().ring.require_membership().rank != root_rank:
        optimizer.load_state_dict(received)
    # As Horovod leaves them: a parameter without a gradient gets zeros, so the first step() may read every .grad.
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)


def broadcast_object(obj: Any, root_rank: int = 0, name: str | None = None) -> Any:
    """``root_rank``'s ``obj`` on every rank: tensors, numbers, strings, lists, tuples and dicts of them (Horovod
    pickles any object; here nothing a peer sends is unpickled, so other objects are refused at the sender).
    ``name`` is Horovod's, accepted and unused (broadcasts run in the order every rank calls them)."""
    _rt.current().ring.require_membership()
    return _rt.collective(lambda: broadcast_tree(obj, root=root_rank, group=_rt.current().ring.group))


def report(**metrics: float) -> None:
    """Tells ringfleet how training goes (Ray Train's ``report``): ``report(loss=loss.item())``. The loss shows in
    the progress lines, the heartbeats and ``ringfleet status``."""
    _rt.current().report(metrics)
