"""Horovod's semantics under ``import training_worker as hvd``, written from Horovod's documented behaviour.

Each behaviour is checked the way a Horovod user would notice it: gradients averaged over the right elements on
every rank whatever path each rank's forward took, accumulated passes summed, a differentiable allreduce, integer
averages, mismatches raised on every rank with the ring still usable, named_parameters validated, an
ElasticSampler that knows the world from ``init()`` on, and ``broadcast_optimizer_state`` leaving zero gradients.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.worker.distributed import run_api_ranks, run_ranks
from training_worker.collectives import RingBackend
from training_worker.optimizer import DistributedOptimizer

pytestmark = pytest.mark.worker

STEPS, SHARE, FEATURES = 5, 4, 6


class _Branchy(torch.nn.Module):
    """Two branches, only one taken per forward: which one depends on the rank and the step (an unused branch, a
    conditional layer, a mixture-of-experts router)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(FEATURES, 8)
        self.fc2 = torch.nn.Linear(8, 8)
        self.fc3 = torch.nn.Linear(FEATURES, 8)
        self.head = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, branch: int) -> torch.Tensor:
        hidden = self.fc2(torch.tanh(self.fc1(x))) if branch == 0 else self.fc3(x)
        return self.head(torch.tanh(hidden))


def _batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(SHARE, FEATURES, generator=gen)
    return x, x.sum(dim=1, keepdim=True).cos()


def _branch(rank: int, step: int) -> int:
    return (rank + step) % 2


def _train_branchy(rank: int, world: int) -> dict[str, Any]:
    model = _Branchy()
    backend = RingBackend(small_bytes=0)
    inner = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # small buckets: several per step, some reduced while backward still runs
    opt = DistributedOptimizer(inner, model.named_parameters(), bucket_bytes=200, backend=backend)
    for step in range(STEPS):
        x, y = _batch(step, rank)
        torch.nn.functional.mse_loss(model(x, _branch(rank, step)), y).backward()
        opt.step()
        opt.zero_grad()
    opt.close()
    backend.close()
    return {"params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]), "layout": opt.layout()}


def _train_branchy_alone(world: int) -> torch.Tensor:
    """One process, the whole global batch: each rank's loss computed here, averaged over the ranks."""
    model = _Branchy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(STEPS):
        losses = []
        for rank in range(world):
            x, y = _batch(step, rank)
            losses.append(torch.nn.functional.mse_loss(model(x, _branch(rank, step)), y))
        torch.stack(losses).mean().backward()
        opt.step()
        opt.zero_grad()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_taking_different_branches_end_with_identical_parameters_equal_to_one_large_batch(world: int) -> None:
    # given ranks whose forward takes a different branch from the first step on (so their gradients arrive in a
    # different order and some parameters have none on some rank)
    results = run_ranks(_train_branchy, world, timeout=120)
    # then every rank reduced the same parameters in the same buckets
    assert all(r["layout"] == results[0]["layout"] for r in results)
    # and every rank ends with the same parameters, those of one process training on the whole global batch
    for r in results[1:]:
        assert torch.equal(r["params"], results[0]["params"])
    torch.testing.assert_close(results[0]["params"], _train_branchy_alone(world), rtol=1e-5, atol=1e-6)


def _accumulate(rank: int, world: int, passes: int) -> torch.Tensor:
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, 1)
    backend = RingBackend()
    opt = DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05), model.named_parameters(), passes, backend=backend
    )
    x, y = _batch(0, rank)
    for _ in range(passes):
        torch.nn.functional.mse_loss(model(x), y).backward()  # the same micro-batch k times: k times its gradient
    opt.step()
    opt.close()
    backend.close()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_accumulated_passes_are_summed_as_horovod_sums_them() -> None:
    # given two ranks that run the same micro-batch through backward 3 times before one step
    thrice = run_ranks(_accumulate, 2, 3)[0]
    # and one plain step of the same data on one process with 3 times the learning rate
    torch.manual_seed(0)
    model = torch.nn.Linear(FEATURES, 1)
    before = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
    losses = [torch.nn.functional.mse_loss(model(x), y) for x, y in (_batch(0, 0), _batch(0, 1))]
    torch.stack(losses).mean().backward()
    grad = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    # then the step applied the sum of the three passes' (averaged) gradients, not their mean
    torch.testing.assert_close(thrice, before - 0.05 * 3 * grad, rtol=1e-5, atol=1e-6)


def _collectives(rank: int, world: int) -> dict[str, Any]:
    import training_worker as hvd

    out: dict[str, Any] = {}
    # a differentiable allreduce: the gradient of an average is the average of the gradients
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    weights = torch.tensor([float(rank + 1), 10.0 * (rank + 1)])
    (hvd.allreduce(x * (rank + 1), name="x") * weights).sum().backward()
    out["grad_avg"] = x.grad.clone() if x.grad is not None else None
    z = torch.tensor([3.0], requires_grad=True)
    hvd.allreduce(z, op=hvd.Sum).sum().backward()
    out["grad_sum"] = z.grad.clone() if z.grad is not None else None
    # integer averages stay integers: the sum divided by the world size, truncated
    same = torch.tensor([5, -7, 9], dtype=torch.int32)
    out["int_same"] = hvd.allreduce(same)
    out["int_rank"] = hvd.allreduce(torch.tensor([rank, -rank], dtype=torch.int64), op=hvd.Average)
    out["int_sum"] = hvd.allreduce(torch.tensor([rank], dtype=torch.int64), op=hvd.Sum)
    # mismatches: each raises on every rank, names the tensor and what differs, and the ring stays usable
    cases = {
        "size": lambda: hvd.allreduce(torch.ones(3 + rank), name="sized"),
        "shape": lambda: hvd.allreduce(torch.ones((2, 3) if rank == 0 else (3, 2)), name="shaped"),
        "dtype": lambda: hvd.allreduce(torch.ones(4, dtype=torch.float32 if rank == 0 else torch.int32), name="typed"),
        "op": lambda: hvd.allreduce(torch.ones(2), name="opped", op=hvd.Sum if rank == 0 else hvd.Average),
        "name": lambda: hvd.allreduce(torch.ones(2), name=f"tensor-{rank}"),
    }
    errors: dict[str, Any] = {}
    for case, call in cases.items():
        try:
            call()
            errors[case] = None
        except RuntimeError as e:
            errors[case] = str(e)
        errors[case + "_after"] = hvd.allreduce(torch.tensor([float(rank)]), op=hvd.Sum)
    out["errors"] = errors
    out["object"] = hvd.broadcast_object({"step": 7 * (rank + 1)}, root_rank=1, name="meta")
    return out


def test_allreduce_is_differentiable_averages_integers_and_raises_mismatches_on_every_rank() -> None:
    world = 3
    results = run_api_ranks(_collectives, world, timeout=120)
    for rank, r in enumerate(results):
        # the gradient of allreduce(x * (rank+1)) . w_rank is (rank+1) * average over ranks of w
        mean_w = torch.tensor([2.0, 20.0])  # (1 + 2 + 3) / 3 and (10 + 20 + 30) / 3
        torch.testing.assert_close(r["grad_avg"], (rank + 1) * mean_w)
        torch.testing.assert_close(r["grad_sum"], torch.tensor([3.0]))  # ones summed over 3 ranks
        assert r["int_same"].dtype == torch.int32 and r["int_same"].tolist() == [5, -7, 9]
        assert r["int_rank"].dtype == torch.int64 and r["int_rank"].tolist() == [1, -1]  # (0+1+2)/3, truncated
        assert r["int_sum"].tolist() == [3]
        errors = r["errors"]
        assert "sized" in errors["size"] and "shape" in errors["size"]
        assert "shaped" in errors["shape"] and "[2, 3]" in errors["shape"] and "[3, 2]" in errors["shape"]
        assert "typed" in errors["dtype"] and "float32" in errors["dtype"] and "int32" in errors["dtype"]
        assert "opped" in errors["op"] and "op" in errors["op"]
        assert "tensor-0" in errors["name"] and "tensor-1" in errors["name"]
        for case in ("size", "shape", "dtype", "op", "name"):
            assert errors[case] == results[0]["errors"][case]  # the same message on every rank
            assert errors[case + "_after"].tolist() == [3.0]  # and the next collective works
        assert r["object"] == {"step": 14}


class _Layered(torch.nn.Module):
    def __init__(self, extra: bool) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, 4)
        self.fc2 = torch.nn.Linear(4, 1)
        if extra:
            self.fc_only_here = torch.nn.Linear(4, 4)


def _mismatched_models(rank: int, world: int) -> dict[str, Any]:
    import training_worker as hvd

    model = _Layered(extra=rank == 1)
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model.named_parameters())
    error = None
    try:
        model.fc2(model.fc1(torch.ones(2, 4))).sum().backward()
        opt.step()
    except RuntimeError as e:
        error = str(e)
    opt.close()
    after = hvd.allreduce(torch.tensor([1.0]), op=hvd.Sum)
    return {"error": error, "after": after}


def test_optimizers_over_different_parameters_raise_on_every_rank_naming_the_parameter() -> None:
    results = run_api_ranks(_mismatched_models, 2, timeout=120)
    for r in results:
        assert r["error"] is not None and "fc_only_here" in r["error"], r["error"]
        assert r["error"] == results[0]["error"]
        assert r["after"].tolist() == [2.0]


def test_named_parameters_must_name_every_optimised_parameter_once() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    named = list(model.named_parameters())
    with pytest.raises(ValueError, match="unique"):
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), [named[0], ("0.weight", named[1][1])])
    with pytest.raises(ValueError, match="not named"):
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), named[:2])
    with pytest.raises(ValueError, match="tuples"):
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), list(model.parameters()))  # type: ignore[arg-type]
    # a frozen part of the model named but not optimised is left alone, as Horovod leaves it
    opt = DistributedOptimizer(torch.optim.SGD(model[1].parameters(), lr=0.1), model.named_parameters())
    assert opt.layout() == [["1.bias", "1.weight"]]
    opt.close()


def _sampled_and_broadcast(rank: int, world: int) -> dict[str, Any]:
    import training_worker as hvd

    # iterated before any collective: the sampler must already know this rank's place
    sampler = hvd.elastic.ElasticSampler(list(range(24)), global_batch_size=6, shuffle=False)
    taken = [i for batch in sampler for i in batch]
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.01 * (rank + 1))
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    return {
        "taken": taken,
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "lr": opt.param_groups[0]["lr"],
    }


def test_sampler_knows_the_world_from_init_and_optimizer_state_broadcast_leaves_zero_gradients() -> None:
    world = 3
    results = run_api_ranks(_sampled_and_broadcast, world, timeout=120)
    taken = [r["taken"] for r in results]
    # each rank took its third of every global batch: 24 samples once each, not 24 per rank
    assert sorted(i for t in taken for i in t) == list(range(24))
    assert all(len(t) == 8 for t in taken)
    for r in results:
        assert r["lr"] == pytest.approx(0.01)
        assert all(g is not None and torch.count_nonzero(g) == 0 for g in r["grads"])
