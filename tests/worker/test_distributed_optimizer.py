"""DistributedOptimizer trains two workers to where native all-reduce and one worker on the doubled batch get."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from tests.worker.distributed import run_ranks
from training_worker.collectives import AllreduceBackend, NativeBackend, RingBackend
from training_worker.optimizer import DistributedOptimizer
from training_worker.tree import broadcast_tree

pytestmark = pytest.mark.worker

STEPS, BATCH, FEATURES = 6, 8, 5


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(42)
    x = torch.randn(STEPS, 2 * BATCH, FEATURES, generator=gen)
    return x, x.sum(dim=2, keepdim=True).sin()


def _train(rank: int, world: int, backend: AllreduceBackend | None, passes: int = 1) -> torch.Tensor:
    model = _model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt: DistributedOptimizer | torch.optim.Optimizer = inner
    if backend is not None:
        # small buckets: several of them are reduced while backward is still running
        opt = DistributedOptimizer(inner, model.named_parameters(), passes, bucket_bytes=512, backend=backend)
    x, y = _data()
    share = 2 * BATCH // world
    for step in range(STEPS):
        xs, ys = x[step, rank * share : (rank + 1) * share], y[step, rank * share : (rank + 1) * share]
        for micro_x, micro_y in zip(xs.chunk(passes), ys.chunk(passes), strict=True):
            # Horovod sums the passes: dividing each micro-batch's loss by their number gives the batch's mean
            (torch.nn.functional.mse_loss(model(micro_x), micro_y) / passes).backward()
        opt.step()
        opt.zero_grad()
    if isinstance(opt, DistributedOptimizer):
        opt.close()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _three_ways(rank: int, world: int) -> dict[str, torch.Tensor]:
    ring = RingBackend(small_bytes=0)
    results = {
        "ring": _train(rank, world, ring),
        "native": _train(rank, world, NativeBackend()),
        "ring_accumulating": _train(rank, world, ring, passes=2),
    }
    ring.close()
    if rank == 0:
        results["single"] = _train(0, 1, None)
    return results


def test_two_workers_on_the_ring_match_native_all_reduce_and_one_worker_with_the_doubled_batch() -> None:
    # given two gloo workers, each with half of a global batch, and one worker with all of it
    # when each trains six SGD-with-momentum steps: on our ring, on native all_reduce, on the ring accumulating
    # two backward passes per step, and alone
    rank0, rank1 = run_ranks(_three_ways, 2, timeout=120)
    # then both ranks hold identical parameters, and every way of training ends at the same parameters
    for way in ("ring", "native", "ring_accumulating"):
        assert torch.equal(rank0[way], rank1[way]), way
        assert torch.allclose(rank0[way], rank0["single"], atol=1e-5), way
    assert not torch.allclose(rank0["single"], _model_params()), "training must have moved the parameters"


def _model_params() -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in _model().parameters()])


def _join(rank: int, world: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    torch.manual_seed(rank)  # the joiner starts from other weights and no optimizer state
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    if rank == 0:  # the survivor has trained
        model(torch.ones(2, 4)).sum().backward()
        opt.step()
    state = broadcast_tree({"model": model.state_dict(), "optimizer": opt.state_dict()}, root=0)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    exp_avg = opt.state_dict()["state"][0]["exp_avg"]
    step = int(opt.state_dict()["state"][0]["step"])
    dist.barrier()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]), {"exp_avg": exp_avg}, step


def test_a_joining_worker_receives_parameters_and_optimizer_state_from_a_survivor() -> None:
    # given a survivor that has taken an Adam step and a joiner with other weights and no optimizer state
    # when the survivor broadcasts its state
    (p0, s0, step0), (p1, s1, step1) = run_ranks(_join, 2)
    # then the joiner holds the same parameters, the same Adam moments and the same step count
    assert torch.equal(p0, p1)
    assert torch.equal(s0["exp_avg"], s1["exp_avg"])
    assert step0 == step1 == 1


class _CountingBackend:
    """A ring of one that counts what it is asked to reduce."""

    name = "counting"
    group: dist.ProcessGroup | None = None

    def __init__(self) -> None:
        self.calls = 0

    def enabled(self) -> bool:
        return True

    def allreduce_(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return tensor

    def allreduce_async(self, tensor: torch.Tensor, op: str = "sum") -> _Done:
        self.calls += 1
        return _Done()

    def close(self) -> None:
        pass


class _Done:
    def wait(self) -> None:
        pass


def test_a_scheduler_on_the_wrapper_drives_the_wrapped_optimizer_even_after_a_state_load() -> None:
    # given AdamW wrapped, a warm-up schedule attached to the wrapper, and its state loaded back (as a sync does)
    model = _model()
    optimizer = DistributedOptimizer(
        torch.optim.AdamW(model.parameters(), lr=1.0), model.named_parameters(), backend=_CountingBackend()
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 4))
    optimizer.load_state_dict(optimizer.state_dict())
    # when three steps are taken
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, FEATURES)).sum().backward()
        optimizer.step()
        schedule.step()
    # then the optimizer that steps has the scheduled learning rate, and the wrapper shows its state
    assert optimizer.optimizer.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 1.0
    assert len(optimizer.state) == len(list(model.parameters()))


def test_clipping_between_synchronize_and_step_reduces_each_gradient_once() -> None:
    # given a model whose gradients are reduced by a counting backend, in two buckets (a small first one, as DDP's)
    model = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Linear(512, 512))
    backend = _CountingBackend()
    optimizer = DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model.named_parameters(), backend=backend
    )
    # when a step synchronizes, clips the averaged gradients, then steps (Horovod's recipe)
    model(torch.randn(2, 512)).sum().backward()
    optimizer.synchronize()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    with optimizer.skip_synchronize():
        optimizer.step()
    # then every bucket was reduced once, not twice, and the clipped gradient is what was applied
    assert backend.calls == 2
    assert float(norm) > 1.0
    assert float(torch.nn.utils.clip_grad_norm_(model.parameters(), float("inf"))) <= 1.0 + 1e-5
