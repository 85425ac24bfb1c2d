"""DistributedOptimizer: gradient hooks fill fusion buckets, each full bucket is reduced while backward goes on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from training_worker import runtime as _rt
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
    launched: bool = False


@dataclass
class _Building:
    params: list[torch.nn.Parameter] = field(default_factory=list)
    numel: int = 0
    nbytes: int = 0


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


def _parameters(
    optimizer: torch.optim.Optimizer,
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]] | Iterable[torch.nn.Parameter] | None,
) -> list[torch.nn.Parameter]:
    """``named_parameters`` (names dropped), or all the optimizer's; each must be one the optimizer optimises."""
    if named_parameters is None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
    else:
        params = [p[1] if isinstance(p, tuple) else p for p in named_parameters]
    grouped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [p for p in params if id(p) not in grouped]
    if missing:
        raise ValueError(f"{len(missing)} of named_parameters are not optimised by the wrapped optimizer")
    return params


class DistributedOptimizer(torch.optim.Optimizer):
    """Wraps any torch optimizer so that ``step()`` applies gradients averaged over all ranks (Horovod's
    ``hvd.DistributedOptimizer``).

    Buckets are formed on the first step in the order backward produces gradients, then kept (and their fusion
    buffers reused) for the rest of the run; buckets are launched in that order on every rank, so all ranks issue
    the same sequence of collectives, each while backward still runs. With ``backward_passes_per_step=k`` the
    gradients of k backward passes are accumulated locally and reduced once; the applied gradient is their mean over
    passes and ranks. ``synchronize()`` makes the averaged gradients available before ``step()`` (to clip them);
    ``step()`` then does not reduce again.

    It is a ``torch.optim.Optimizer`` sharing the wrapped one's ``param_groups`` and ``state``, so LR schedulers,
    ``state_dict()`` and ``zero_grad()`` work on it as on the original. The ring it reduces over is the runtime's
    current one (it changes with every generation); ``backend`` pins one instead (benchmarks, tests).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        named_parameters: Iterable[tuple[str, torch.nn.Parameter]] | Iterable[torch.nn.Parameter] | None = None,
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
        params = _parameters(optimizer, named_parameters)
        self.params = [p for p in params if p.requires_grad]
        self._passes = dict.fromkeys(map(id, self.params), 0)
        self._buckets: list[_Bucket] = []
        self._bucket_of: dict[int, _Bucket] = {}
        self._frozen = False
        self._building = _Building()
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
        return self._pinned if self._pinned is not None else _rt.current().require_backend()

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
            bucket.ready, bucket.handle, bucket.launched = 0, None, False
        self._next_launch = 0
        self._passes = dict.fromkeys(self._passes, 0)
        self._synchronized = False
        self.zero_grad()  # what the failed step accumulated or half reduced must not reach the next one

    def close(self) -> None:
        """Removes the gradient hooks."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _on_grad(self, param: torch.Tensor) -> None:
        key = id(param)
        self._passes[key] += 1
        if self._passes[key] < self.backward_passes_per_step:
            return
        if self._passes[key] > self.backward_passes_per_step:
            raise RuntimeError("a gradient arrived after its bucket was reduced: call step() after each accumulation")
        if self._frozen:
            bucket = self._bucket_of[key]
            bucket.ready += 1
            self._launch_ready()
            return
        assert isinstance(param, torch.nn.Parameter)
        building = self._building
        building.params.append(param)
        building.numel += param.numel()
        building.nbytes += param.numel() * param.element_size()
        if building.nbytes >= (min(FIRST_BUCKET_BYTES, self.bucket_bytes) if not self._buckets else self.bucket_bytes):
            self._close_building()

    def _close_building(self) -> None:
        params = self._building.params
        if not params:
            return
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += p.numel()
        bucket = _Bucket(params, offsets, torch.empty(total, dtype=params[0].dtype, device=params[0].device))
        bucket.ready = len(params)
        self._buckets.append(bucket)
        for p in params:
            self._bucket_of[id(p)] = bucket
        self._building = _Building()
        self._launch_ready()

    def _launch_ready(self) -> None:
        # In bucket order only: every rank must issue the same collectives in the same order.
        while self._next_launch < len(self._buckets):
            bucket = self._buckets[self._next_launch]
            if bucket.ready < len(bucket.params):
                return
            self._launch(bucket)
            self._next_launch += 1

    def _launch(self, bucket: _Bucket) -> None:
        for p, offset in zip(bucket.params, bucket.offsets, strict=True):
            part = bucket.buffer[offset : offset + p.numel()]
            if p.grad is None:
                part.zero_()  # unused on this rank this step; it still has to take part in the reduction
            elif p.grad.data_ptr() != part.data_ptr():
                part.copy_(p.grad.reshape(-1))  # a gradient that is not (or no longer) a view into its bucket
        # Each rank's share of the global batch weighs its gradient (ElasticSampler's uneven splits), and k
        # accumulated passes are averaged.
        scale = (1.0 if self._pinned is not None else _rt.current().grad_scale) / self.backward_passes_per_step
        if scale != 1.0:
            bucket.buffer.mul_(scale)
        bucket.handle = _rt.collective(lambda: self.backend.allreduce_async(bucket.buffer, "avg"))
        bucket.launched = True

    def synchronize(self) -> None:
        """Reduces what backward has not launched yet, waits for every bucket, and writes the averages to .grad.

        Call it before ``step()`` to work on the averaged gradients (``clip_grad_norm_``); ``step()`` then applies
        them without reducing again.
        """
        if self._synchronized:
            return
        if not self._frozen:
            # Parameters that produced no gradient on the first step go into the last bucket.
            building = {id(p) for p in self._building.params}
            for p in self.params:
                if id(p) not in self._bucket_of and id(p) not in building:
                    self._building.params.append(p)
            self._close_building()
            self._frozen = True
        for bucket in self._buckets:
            bucket.ready = len(bucket.params)
        self._launch_ready()
        for bucket in self._buckets:
            handle = bucket.handle
            assert handle is not None
            _rt.collective(handle.wait)
            for p, offset in zip(bucket.params, bucket.offsets, strict=True):
                # From now on the gradient is a view into the bucket (DDP's gradient_as_bucket_view): backward
                # accumulates straight into what is reduced, and the average needs no copy back.
                reduced = bucket.buffer[offset : offset + p.numel()].view_as(p)
                if p.grad is None or p.grad.data_ptr() != reduced.data_ptr():
                    p.grad = reduced
            bucket.ready, bucket.handle, bucket.launched = 0, None, False
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
            _rt.current().before_update()  # the last commit's copy of the parameters completes first
        result = self.optimizer.step()
        self._synchronized = False
        if self._pinned is None:
            _rt.current().on_step()
        return result
