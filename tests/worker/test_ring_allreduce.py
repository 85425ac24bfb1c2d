"""Our ring all-reduce gives what dist.all_reduce gives, on real gloo processes, for world sizes 1 to 4."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.distributed as dist

from tests.worker.distributed import run_ranks
from training_worker.collectives import NativeBackend, RingAllreduce, RingBackend, select_backend

pytestmark = pytest.mark.worker

LENGTHS = (1, 2, 3, 7, 1001, 4099, 65537)


def _compare_with_native(rank: int, world: int) -> list[str]:
    """On every subgroup of 1..world ranks: ring vs native; returns the cases that differ."""
    mismatches: list[str] = []
    for size in range(1, world + 1):
        group = dist.new_group(list(range(size)))
        if rank >= size:
            continue
        # small_bytes=0: the ring at every size, cut into many pipelined segments; else whole-tensor exchange
        # below 1 KiB and the ring above it.
        rings = {"ring": RingAllreduce(group, segment_bytes=4096, small_bytes=0), "mixed": RingAllreduce(group)}
        rings["mixed"].small_bytes = 1024
        for (mode, ring), length in itertools.product(rings.items(), LENGTHS):
            gen = torch.Generator().manual_seed(1000 * length + rank)
            integers = torch.randint(-1000, 1000, (length,), generator=gen).float()
            ours, native = integers.clone(), integers.clone()
            ring(ours, "sum")
            dist.all_reduce(native, group=group)
            if not torch.equal(ours, native):
                mismatches.append(f"{mode} world {size} length {length} integer sum")
            for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 1e-2), (torch.bfloat16, 5e-2)):
                values = torch.randn(length, generator=gen).to(dtype)
                ours, native = values.clone(), values.clone()
                ring(ours, "avg")
                dist.all_reduce(native, group=group)
                native /= size
                if not torch.allclose(ours.float(), native.float(), rtol=tol, atol=tol):
                    mismatches.append(f"{mode} world {size} length {length} {dtype} avg")
    return mismatches


def test_ring_equals_native_all_reduce_for_world_sizes_1_to_4_and_odd_lengths() -> None:
    # given 4 gloo processes, and subgroups of 1, 2, 3 and 4 of them
    # when each sums integer-valued fp32 and averages random fp32/fp16/bf16 tensors of odd lengths
    mismatches = run_ranks(_compare_with_native, 4, timeout=90)
    # then the ring equals native all_reduce exactly for integer sums, and allclose for the rest
    assert mismatches == [[], [], [], []]


def _compressed(rank: int, world: int) -> tuple[list[float], bool]:
    values = torch.full((1000,), 1.0 + rank / 3)
    exact = values.clone()
    dist.all_reduce(exact)
    ring = RingAllreduce(segment_bytes=512, small_bytes=0)
    ring(values, "sum", wire_dtype=torch.bfloat16)
    return values.tolist(), bool(torch.allclose(values, exact, rtol=1e-2))


def test_bf16_wire_compression_stays_close_and_every_rank_gets_the_same_bits() -> None:
    # given 3 ranks reducing fp32 tensors with bf16 on the wire
    results = run_ranks(_compressed, 3)
    # then the sum is within bf16 precision of the exact one, and identical on every rank
    assert all(close for _, close in results)
    assert results[0][0] == results[1][0] == results[2][0]


def _reuses_buffers(rank: int, world: int) -> tuple[int, bool]:
    ring = RingAllreduce(small_bytes=0)
    tensor = torch.ones(10_000)
    ring(tensor, "sum")
    before = {key: buf.data_ptr() for key, buf in ring._buffers.items()}
    for _ in range(3):
        tensor = torch.ones(10_000)
        ring(tensor, "avg")
    after = {key: buf.data_ptr() for key, buf in ring._buffers.items()}
    return len(after), before == after and bool(torch.equal(tensor, torch.ones(10_000)))


def test_scratch_buffers_are_allocated_once_and_reused() -> None:
    # given a ring that has reduced one tensor
    # when it reduces tensors of the same size again
    results = run_ranks(_reuses_buffers, 2)
    # then it allocated no new scratch buffer, and averaging ones still gives ones
    assert all(count >= 1 and same for count, same in results)


def _backends(rank: int, world: int) -> tuple[str, str, list[float], list[float]]:
    first = select_backend(["ring", "native"])
    second = select_backend(["native", "ring"])
    assert isinstance(first, RingBackend) and isinstance(second, NativeBackend)
    a = torch.tensor([float(rank), 1.0])
    b = a.clone()
    handle = first.allreduce_async(a, "avg")
    handle.wait()
    second.allreduce_async(b, "avg").wait()
    first.close()
    return first.name, second.name, a.tolist(), b.tolist()


def test_backends_are_tried_in_the_configured_order_and_agree() -> None:
    # given the backend lists [ring, native] and [native, ring]
    results = run_ranks(_backends, 2)
    # then the first enabled one is picked, and both average the same way
    for first, second, a, b in results:
        assert (first, second) == ("ring", "native")
        assert a == b == [0.5, 1.0]


def test_no_backend_is_enabled_without_a_process_group() -> None:
    # given no initialised torch.distributed
    # when a backend is selected, then the error says why
    with pytest.raises(RuntimeError, match="initialised"):
        select_backend(["ring"])


def _compressed_exchange(rank: int, world: int) -> list[float]:
    values = torch.full((10,), 1.0 + rank / 3)
    RingAllreduce()(values, "avg", wire_dtype=torch.float16)
    return values.tolist()


def test_small_tensors_compressed_on_the_wire_agree_bit_for_bit_across_ranks() -> None:
    # given 3 ranks reducing a tensor small enough for the one-round exchange, with fp16 on the wire
    results = run_ranks(_compressed_exchange, 3)
    # then every rank holds the same bits, close to the exact average
    assert results[0] == results[1] == results[2]
    assert results[0][0] == pytest.approx((1.0 + 4 / 3 + 5 / 3) / 3, rel=1e-3)
