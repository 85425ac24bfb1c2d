"""The hierarchical all-reduce gives what a flat all-reduce gives, on real gloo processes grouped into emulated
instances of equal and of different slot counts, and sends fewer bytes between instances than a flat ring."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.distributed as dist

from tests.worker.distributed import run_ranks
from training_worker.collectives import (
    AllreduceBackend,
    HierarchicalAllreduce,
    HierarchicalBackend,
    Hierarchy,
    NativeBackend,
    RingAllreduce,
    contiguous_instances,
    select_backend,
)
from training_worker.optimizer import DistributedOptimizer

pytestmark = pytest.mark.worker

# Fewer elements than shards, odd lengths, and one long enough to cut the rings into several pipelined segments.
LENGTHS = (1, 2, 3, 7, 1001, 65537)


def _compare_with_flat(rank: int, world: int, slots: list[int]) -> list[str]:
    """The hierarchical all-reduce vs dist.all_reduce; returns the cases that differ."""
    mismatches: list[str] = []
    # small_bytes=0: the rings at every size, 4 KiB segments (cut inside the instance too); 1 KiB: one-round
    # exchanges across instances for small shards.
    modes = {
        "ring": HierarchicalAllreduce(contiguous_instances(slots), segment_bytes=4096, small_bytes=0),
        "mixed": HierarchicalAllreduce(contiguous_instances(slots), small_bytes=1024),
        # gloo's reduce and broadcast inside the instance: the path CUDA tensors take with NCCL's
        "collectives": HierarchicalAllreduce(contiguous_instances(slots), small_bytes=0, instance_collectives=True),
    }
    for mode, reducer in modes.items():
        for length in LENGTHS:
            case = f"{mode} slots {slots} length {length}"
            gen = torch.Generator().manual_seed(1000 * length + rank)
            integers = torch.randint(-1000, 1000, (length,), generator=gen).float()
            ours, flat = integers.clone(), integers.clone()
            reducer(ours, "sum")
            dist.all_reduce(flat)
            if not torch.equal(ours, flat):
                mismatches.append(f"{case} integer sum")
            for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 5e-2)):
                values = torch.randn(length, generator=gen).to(dtype)
                ours, flat = values.clone(), values.clone()
                reducer(ours, "avg")
                dist.all_reduce(flat)
                flat /= world
                if not torch.allclose(ours.float(), flat.float(), rtol=tol, atol=tol):
                    mismatches.append(f"{case} {dtype} avg")
                agreed = [torch.empty_like(ours) for _ in range(world)]
                dist.all_gather(agreed, ours)
                if not all(torch.equal(agreed[0], other) for other in agreed):
                    mismatches.append(f"{case} {dtype} avg differs between ranks")
    return mismatches


def _inter_instance_bytes(rank: int, slots: list[int], numel: int) -> tuple[int, int]:
    """(bytes this rank sent to other instances hierarchically, and in a flat ring over all ranks)."""
    hierarchy = Hierarchy.of(contiguous_instances(slots))
    hierarchical = HierarchicalBackend(hierarchy, small_bytes=0)
    flat = RingAllreduce(small_bytes=0)
    hierarchical.allreduce_(torch.ones(numel))
    flat(torch.ones(numel))
    mine = hierarchy.instance_of(rank)
    crossed = sum(n for peer, n in flat.sent_bytes.items() if hierarchy.instance_of(peer) != mine)
    return hierarchical.inter_instance_bytes, crossed


def _selected(rank: int, slots: list[int]) -> tuple[str, str, list[float]]:
    without = select_backend(["hierarchical", "ring"])
    chosen = select_backend(["hierarchical", "ring"], instances=contiguous_instances(slots))
    values = torch.tensor([float(rank), 1.0])
    chosen.allreduce_async(values, "avg").wait()
    chosen.close()
    return without.name, chosen.name, values.tolist()


def _trained(rank: int, world: int, backend: AllreduceBackend) -> list[float]:
    """Parameters after 4 SGD steps of a small MLP, each rank on its share of a global batch of 16."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    # small buckets: several are reduced while backward still runs, on the backend's communication thread
    opt = DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), model.named_parameters(), bucket_bytes=256, backend=backend
    )
    gen = torch.Generator().manual_seed(42)
    share = 16 // world
    for _ in range(4):
        x = torch.randn(16, 5, generator=gen)
        xs, ys = x[rank * share : (rank + 1) * share], x[rank * share : (rank + 1) * share].sum(1, keepdim=True)
        torch.nn.functional.mse_loss(model(xs), ys).backward()
        opt.step()
        opt.zero_grad()
    opt.close()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


NUMEL = 4000


@dataclass
class RankResult:
    """What the tests below check on one rank, from one set of processes (spawning them is the slow part)."""

    #: By slot layout: the cases that differ from the flat all-reduce.
    mismatches: dict[str, list[str]]
    #: By slot layout: (bytes sent to other instances hierarchically, in a flat ring).
    sent: dict[str, tuple[int, int]]
    #: (the backend picked without instances, with them, what the latter averaged).
    selected: tuple[str, str, list[float]]
    #: Parameters trained by DistributedOptimizer: (on the hierarchical backend, on native all-reduce).
    trained: tuple[list[float], list[float]]


def _everything(rank: int, world: int, layouts: list[list[int]]) -> RankResult:
    return RankResult(
        mismatches={str(slots): _compare_with_flat(rank, world, slots) for slots in layouts},
        sent={str(slots): _inter_instance_bytes(rank, slots, NUMEL) for slots in layouts},
        selected=_selected(rank, layouts[0]),
        trained=(
            _trained(rank, world, HierarchicalBackend(contiguous_instances(layouts[0]))),
            _trained(rank, world, NativeBackend()),
        ),
    )


@pytest.fixture(scope="module")
def equal_slots() -> list[RankResult]:
    """4 gloo processes as 2 instances x 2 slots, then as one instance of 4."""
    return run_ranks(_everything, 4, [[2, 2], [4]], timeout=120)


@pytest.fixture(scope="module")
def unequal_slots() -> list[RankResult]:
    """5 gloo processes as a 1-slot and a 4-slot instance, then as a 2-slot and a 3-slot one, then as 5 instances of
    one slot (the hierarchy is then one flat ring)."""
    return run_ranks(_everything, 5, [[1, 4], [2, 3], [1, 1, 1, 1, 1]], timeout=150)


def test_two_instances_of_two_slots_reduce_like_a_flat_all_reduce(equal_slots: list[RankResult]) -> None:
    # given 2 instances x 2 slots
    # when each sums integer-valued fp32 and averages fp32/bf16 tensors of odd lengths, hierarchically
    # then the sums equal dist.all_reduce's exactly, the averages are allclose, and all ranks hold the same bits
    assert [rank.mismatches["[2, 2]"] for rank in equal_slots] == [[]] * 4


def test_one_instance_reduces_inside_itself_alone(equal_slots: list[RankResult]) -> None:
    # given 4 slots of one instance: no ring crosses instances
    # then the reduction inside the instance alone gives the flat result, and nothing crosses instances
    assert [rank.mismatches["[4]"] for rank in equal_slots] == [[]] * 4
    assert [rank.sent["[4]"][0] for rank in equal_slots] == [0] * 4


def test_instances_with_different_slot_counts_reduce_like_a_flat_all_reduce(
    unequal_slots: list[RankResult],
) -> None:
    # given a 1-slot and a 4-slot instance (world 5), and a 2-slot and a 3-slot one
    # then every shard is covered (the smaller instance's ranks own several): the result is the flat one's
    assert [rank.mismatches["[1, 4]"] + rank.mismatches["[2, 3]"] for rank in unequal_slots] == [[]] * 5


def test_instances_of_one_slot_reduce_on_one_flat_ring(unequal_slots: list[RankResult]) -> None:
    # given 5 instances of one slot each: nothing to reduce inside an instance
    # then the one ring across them gives the flat result, and sends what a flat ring sends
    assert [rank.mismatches["[1, 1, 1, 1, 1]"] for rank in unequal_slots] == [[]] * 5
    assert [rank.sent["[1, 1, 1, 1, 1]"][0] for rank in unequal_slots] == [
        rank.sent["[1, 1, 1, 1, 1]"][1] for rank in unequal_slots
    ]


@pytest.mark.parametrize(("slots", "expected_ratio"), [([2, 2], 2 / 3), ([1, 4], 5 / 8), ([2, 3], 5 / 8)])
def test_fewer_bytes_cross_instances_than_with_a_flat_ring(
    slots: list[int],
    expected_ratio: float,
    equal_slots: list[RankResult],
    unequal_slots: list[RankResult],
) -> None:
    # given W ranks in I instances reducing 4000 fp32 (16,000 bytes), the rings at every size
    world, instances = sum(slots), len(slots)
    ranks = equal_slots if world == 4 else unequal_slots
    sent = [rank.sent[str(slots)] for rank in ranks]
    hierarchical, flat = sum(h for h, _ in sent), sum(f for _, f in sent)
    # then the rings across instances carry 2(I-1) buckets in all, the flat ring 2I(W-1)/W (its I edge ranks)
    assert hierarchical == 2 * (instances - 1) * NUMEL * 4
    assert flat == round(2 * instances * (world - 1) / world * NUMEL * 4)
    assert hierarchical / flat == pytest.approx(expected_ratio)


def test_hierarchical_is_selected_only_when_given_the_instances(equal_slots: list[RankResult]) -> None:
    # given the backend list [hierarchical, ring]
    # then without instances the ring is picked; with them the hierarchical backend, which averages asynchronously
    for rank in equal_slots:
        without, chosen, values = rank.selected
        assert (without, chosen) == ("ring", "hierarchical")
        assert values == pytest.approx([1.5, 1.0])


def test_slots_become_contiguous_ranks_and_every_shard_has_an_owner_in_every_instance() -> None:
    # given a 2-slot and a 3-slot instance
    hierarchy = Hierarchy.of(contiguous_instances([2, 3]))
    # then the bucket is cut into 3 shards; the 2-slot instance's first rank owns two of them
    assert hierarchy.instances == ((0, 1), (2, 3, 4))
    assert [hierarchy.ring(s) for s in range(hierarchy.shards)] == [(0, 2), (1, 3), (0, 4)]
    assert [hierarchy.shards_of(r) for r in range(5)] == [[0, 2], [1], [0], [1], [2]]
    assert hierarchy.bounds(10) == [0, 3, 6, 10]


@pytest.mark.parametrize("instances", [[], [[0], []], [[0, 1], [1]], [[0], [2]], [[1, 2]]])
def test_instances_that_do_not_split_the_ranks_are_refused(instances: list[list[int]]) -> None:
    # given groupings with an empty instance, a rank twice, or a rank missing
    # then the error says what a grouping must be
    with pytest.raises(ValueError, match="split the ranks"):
        Hierarchy.of(instances)


def test_distributed_optimizer_trains_on_it_as_on_native_all_reduce(
    equal_slots: list[RankResult], unequal_slots: list[RankResult]
) -> None:
    # given DistributedOptimizer on 2 instances x 2 slots and on a 1-slot and a 4-slot instance, its buckets
    # reduced hierarchically, and on native all-reduce
    for ranks in (equal_slots, unequal_slots):
        hierarchical = [rank.trained[0] for rank in ranks]
        native = ranks[0].trained[1]
        # then every rank holds the same parameters, those native all-reduce trains to
        assert all(params == hierarchical[0] for params in hierarchical)
        assert hierarchical[0] == pytest.approx(native, abs=1e-5)
