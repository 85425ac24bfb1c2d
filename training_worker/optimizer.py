"""DistributedOptimizer: gradient hooks fill fusion buckets, each full bucket is reduced while backward goes on."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from training_worker import runtime as _rt
from training_worker.agreement import agree
from training_worker.collectives import AllreduceBackend, Handle

__all__ = ["DistributedOptimizer"]

DEFAULT_BUCKET_BYTES = 25 << 20  # DDP's default bucket cap, so bench comparisons are like for like
#: The first bucket is small, as DDP's is: the last layers' gradients (the first backward produces) start their
#: reduction while backward is still early, instead of waiting for 25 MiB of them.
FIRST_BUCKET_BYTES = 1 << 20


@dataclass
class _Bucket:
    params: list[torch.nn.Parameter]
    offsets: list[int]
    buffer: torch.Tensor
    ready: int = 0
    handle: Handle | None = None


def _check_arguments(backward_passes_per_step: int, compression: Any, op: str) -> None:
    if backward_passes_per_step < 1:
        raise ValueError("backward_passes_per_step must be at least 1")
    # Horovod's arguments, accepted so that ported scripts run: gradients are always averaged, and what travels
    # on the wire is the runtime's choice (python -m training_worker --wire fp16|bf16).
    if op != "avg":
        raise ValueError("DistributedOptimizer averages gradients: op must be training_worker.Average")
    if compression not in (None, "none") and getattr(compression, "__name__", "") not in ("none", "NoneCompressor"):
        raise ValueError(
            "gradient compression is set for the whole worker, not per optimizer: run the agent with --wire fp16"
            " (or bf16) and leave compression out"
        )


def _named(
    optimizer: torch.optim.Optimizer, named_parameters: Iterable[tuple[str, torch.nn.Parameter]] | None
) -> list[tuple[str, torch.nn.Parameter]]:
    """Every parameter the optimizer optimises, with its name, in the optimizer's order (the same on every rank).

    Horovod's rules: ``named_parameters`` are (name, parameter) pairs with unique names, naming every parameter the
    optimizer optimises (an unnamed one would train on its local gradient alone), and only those. Without them,
    parameters are named by their position in the optimizer's groups.
    """
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    if named_parameters is None:
        return [(f"param.{i}", p) for i, p in enumerate(ordered)]
    pairs = _pairs(named_parameters)
    # Named parameters the optimizer does not optimise (a frozen part of the model) are left alone, as Horovod does.
    name_of = {id(p): name for name, p in pairs}
    unnamed = [i for i, p in enumerate(ordered) if id(p) not in name_of]
    if unnamed:
        raise ValueError(
            f"named_parameters was specified, but {len(unnamed)} of the optimizer's parameters were not named"
            f" (positions {unnamed[:5]} in its param_groups): pass model.named_parameters() of the whole model"
        )
    return [(name_of[id(p)], p) for p in ordered]


def _pairs(named_parameters: Iterable[tuple[str, torch.nn.Parameter]]) -> list[tuple[str, torch.nn.Parameter]]:
    pairs = list(named_parameters)
    if any(not (isinstance(pair, tuple) and len(pair) == 2) for pair in pairs):
        raise ValueError(
            "named_parameters should be a sequence of (name, parameter) tuples, usually model.named_parameters()"
        )
    names = [name for name, _ in pairs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"parameter names in named_parameters must be unique; repeated: {', '.join(duplicates)}")
    return pairs


class DistributedOptimizer(torch.optim.Optimizer):
    """Wraps any torch optimizer so that ``step()`` applies gradients averaged over all ranks (Horovod's
    ``hvd.DistributedOptimizer``).

    The bucket layout is fixed when the optimizer is built, from the parameters' order alone (reversed, as DDP's
    first layout is: backward produces the last layers' gradients first), never from the order gradients arrive in:
    so it is the same on every rank whatever path each rank's forward took (an unused branch, a router), and every
    rank issues the same collectives in the same order, each bucket's while backward still runs. A parameter that
    has no gradient on a rank on some step contributes zeros there. The ranks check that their layouts agree (names,
    shapes, dtypes) once per ring, before the first bucket is reduced, and raise ``RuntimeError`` on every rank when
    they do not. With ``backward_passes_per_step=k`` the gradients of k backward passes are summed locally and
    reduced once, as Horovod does (divide the loss by k for the mean). ``synchronize()`` makes the averaged
    gradients available before ``step()`` (to clip them); ``step()`` then does not reduce again.

    It is a ``torch.optim.Optimizer`` sharing the wrapped one's ``param_groups`` and ``state``, so LR schedulers,
    ``state_dict()`` and ``zero_grad()`` work on it as on the original. The ring it reduces over is the runtime's
    current one (it changes with every generation); ``backend`` pins one instead (benchmarks, tests).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        named_parameters: Iterable[tuple[str, torch.nn.Parameter]] | None = None,
        backward_passes_per_step: int = 1,
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        backend: AllreduceBackend | None = None,
        compression: Any = None,
        op: str = "avg",
    ) -> None:
        _check_arguments(backward_passes_per_step, compression, op)
        # Not Optimizer.__init__: this object shares the wrapped optimizer's groups and state instead of its own.
        self.optimizer = optimizer
        self.defaults = optimizer.defaults
        self._optimizer_step_pre_hooks = optimizer._optimizer_step_pre_hooks
        self._optimizer_step_post_hooks = optimizer._optimizer_step_post_hooks
        self._optimizer_state_dict_pre_hooks = optimizer._optimizer_state_dict_pre_hooks
        self._optimizer_state_dict_post_hooks = optimizer._optimizer_state_dict_post_hooks
        self._optimizer_load_state_dict_pre_hooks = optimizer._optimizer_load_state_dict_pre_hooks
        self._optimizer_load_state_dict_post_hooks = optimizer._optimizer_load_state_dict_post_hooks
        self._pinned = backend
        self.bucket_bytes = bucket_bytes
        self.backward_passes_per_step = backward_passes_per_step
        named = [(name, p) for name, p in _named(optimizer, named_parameters) if p.requires_grad]
        self.params = [p for _, p in named]
        self._names = {id(p): name for name, p in named}
        self._passes = dict.fromkeys(map(id, self.params), 0)
        self._buckets = self._layout(self.params[::-1])
        self._bucket_of = {id(p): bucket for bucket in self._buckets for p in bucket.params}
        #: The backend (one per ring) the ranks last agreed the layout on.
        self._agreed: AllreduceBackend | None = None
        self._next_launch = 0
        self._synchronized = False
        self._hooks = [p.register_post_accumulate_grad_hook(self._on_grad) for p in self.params]

    # The wrapped optimizer's, always: its load_state_dict() replaces both objects, and a scheduler or a reset
    # callback setting a learning rate on this wrapper must reach the optimizer that steps.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, state: Any) -> None:
        self.optimizer.state = state

    @property
    def backend(self) -> AllreduceBackend:
        return self._pinned if self._pinned is not None else _rt.current().ring.require_backend()

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes the gradients; those that are views into the fusion buckets are zeroed in place and kept (so
        backward keeps accumulating into the buckets), whatever ``set_to_none`` says."""
        bucketed = set()
        for bucket in self._buckets:
            bucket.buffer.zero_()
            for p, offset in zip(bucket.params, bucket.offsets, strict=True):
                if p.grad is not None and p.grad.data_ptr() == bucket.buffer[offset:].data_ptr():
                    bucketed.add(id(p))
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None or id(p) in bucketed:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_().zero_()

    def reset(self) -> None:
        """Forgets a step that was half reduced when its ring failed (called when the state is restored)."""
        for bucket in self._buckets:
            bucket.ready, bucket.handle = 0, None
        self._next_launch = 0
        self._passes = dict.fromkeys(self._passes, 0)
        self._synchronized = False
        self.zero_grad()  # what the failed step accumulated or half reduced must not reach the next one

    def close(self) -> None:
        """Removes the gradient hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _layout(self, params: list[torch.nn.Parameter]) -> list[_Bucket]:
        """Buckets of consecutive ``params`` of one dtype and device, the first up to FIRST_BUCKET_BYTES, the others
        up to ``bucket_bytes``."""
        buckets: list[_Bucket] = []
        run: list[torch.nn.Parameter] = []
        nbytes = 0

        def close() -> None:
            ends = list(itertools.accumulate(p.numel() for p in run))
            offsets, total = [0, *ends[:-1]], ends[-1]
            buckets.append(_Bucket(run, offsets, torch.zeros(total, dtype=run[0].dtype, device=run[0].device)))

        for p in params:
            if run and (p.dtype != run[0].dtype or p.device != run[0].device):
                close()
                run, nbytes = [], 0
            run.append(p)
            nbytes += p.numel() * p.element_size()
            if nbytes >= (min(FIRST_BUCKET_BYTES, self.bucket_bytes) if not buckets else self.bucket_bytes):
                close()
                run, nbytes = [], 0
        if run:
            close()
        return buckets

    def layout(self) -> list[list[str]]:
        """The parameters' names, bucket by bucket, in the order the buckets are reduced (the same on every rank)."""
        return [[self._names[id(p)] for p in bucket.params] for bucket in self._buckets]

    def _on_grad(self, param: torch.Tensor) -> None:
        key = id(param)
        self._passes[key] += 1
        if self._passes[key] < self.backward_passes_per_step:
            return
        if self._passes[key] > self.backward_passes_per_step:
            raise RuntimeError("a gradient arrived after its bucket was reduced: call step() after each accumulation")
        self._bucket_of[key].ready += 1
        self._launch_ready()

    def _agree(self, backend: AllreduceBackend) -> None:
        """Once per ring: every rank must reduce the same tensors in the same buckets, or the averages mix up
        different parameters without any error."""
        if self._agreed is backend:
            return
        description = {
            "tensors": [
                {"name": self._names[id(p)], "dtype": str(p.dtype).removeprefix("torch."), "shape": list(p.shape)}
                for bucket in self._buckets
                for p in bucket.params
            ],
            "buckets": [len(bucket.params) for bucket in self._buckets],
            "backward_passes_per_step": self.backward_passes_per_step,
        }
        mismatch = self._collective(lambda: agree("DistributedOptimizer", description, backend.group))
        if mismatch is not None:
            raise RuntimeError(mismatch)
        self._agreed = backend

    def _collective(self, call: Callable[[], Any]) -> Any:
        return call() if self._pinned is not None else _rt.collective(call)

    def _launch_ready(self) -> None:
        # In bucket order only: every rank must issue the same collectives in the same order.
        while self._next_launch < len(self._buckets):
            bucket = self._buckets[self._next_launch]
            if bucket.ready < len(bucket.params):
                return
            self._launch(bucket)
            self._next_launch += 1

    def _launch(self, bucket: _Bucket) -> None:
        backend = self.backend
        self._agree(backend)
        for p, offset in zip(bucket.params, bucket.offsets, strict=True):
            part = bucket.buffer[offset : offset + p.numel()]
            if p.grad is None:
                part.zero_()  # unused on this rank this step; it still has to take part in the reduction
            elif p.grad.data_ptr() != part.data_ptr():
                part.copy_(p.grad.reshape(-1))  # a gradient that is not (or no longer) a view into its bucket
        # Each rank's share of the global batch weighs its gradient (ElasticSampler's uneven splits); k accumulated
        # passes are summed, as Horovod's are.
        scale = 1.0 if self._pinned is not None else _rt.current().progress.grad_scale
        if scale != 1.0:
            bucket.buffer.mul_(scale)
        bucket.handle = self._collective(lambda: backend.allreduce_async(bucket.buffer, "avg"))

    def synchronize(self) -> None:
        """Reduces what backward has not launched yet, waits for every bucket, and writes the averages to .grad.

        Call it before ``step()`` to work on the averaged gradients (``clip_grad_norm_``); ``step()`` then applies
        them without reducing again.
        """
        if self._synchronized:
            return
        for bucket in self._buckets:
            bucket.ready = len(bucket.params)
        self._launch_ready()
        for bucket in self._buckets:
            handle = bucket.handle
            assert handle is not None
            self._collective(handle.wait)
            for p, offset in zip(bucket.params, bucket.offsets, strict=True):
                # From now on the gradient is a view into the bucket (DDP's gradient_as_bucket_view): backward
                # accumulates straight into what is reduced, and the average needs no copy back.
                reduced = bucket.buffer[offset : offset + p.numel()].view_as(p)
                if p.grad is None or p.grad.data_ptr() != reduced.data_ptr():
                    p.grad = reduced
            bucket.ready, bucket.handle = 0, None
        self._next_launch = 0
        self._passes = dict.fromkeys(self._passes, 0)
        self._synchronized = True

    @contextlib.contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        """Horovod's way to say "step() must not reduce again" after ``synchronize()``; kept so that ported
        scripts run unchanged (``step()`` never reduces twice anyway)."""
        yield

    def step(self, closure: Any = None) -> Any:
        if closure is not None:
            raise ValueError("DistributedOptimizer.step() takes no closure: its gradients come from backward hooks")
        self.synchronize()
        if self._pinned is None:
            _rt.current().boundary.before_update()  # the last commit's copy of the parameters completes first
        result = self.optimizer.step()
        self._synchronized = False
        if self._pinned is None:
            _rt.current().progress.on_step()
        return result
