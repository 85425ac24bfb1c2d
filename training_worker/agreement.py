"""Ranks agree on what they are about to reduce before any of its bytes travel (Horovod's coordinator check).

Horovod's coordinator compares every rank's request (name, op, dtype, shape) before a tensor is reduced and raises
the same ``RuntimeError`` on every rank when they differ; the processes live on and the next collective works. Here
each rank describes what it is about to reduce (a JSON-able description), and the ranks all-gather an 8-byte digest
of it with its length: one small collective. Only when the digests differ do the descriptions themselves travel
(as JSON bytes, never pickled), so that every rank builds the same message naming the tensor and what differs.

The optimizer agrees its bucket layout once per ring (not per step); ``allreduce`` agrees every call.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["agree", "describe"]

#: Longest description accepted from a peer (a bucket layout of a large model is a few hundred KiB).
MAX_DESCRIPTION_BYTES = 16 << 20


def describe(name: str | None, tensor: torch.Tensor, op: str) -> dict[str, Any]:
    """What a rank is about to reduce: the fields Horovod's coordinator compares."""
    return {"name": name, "op": op, "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


def agree(what: str, description: Any, group: dist.ProcessGroup | None) -> str | None:
    """None when every rank of ``group`` passed an equal ``description``; otherwise the same message on every rank,
    naming ``what`` and the first difference, for the caller to raise as ``RuntimeError``. Costs one 16-byte
    all-gather when they agree. (Returned, not raised: a failure of the exchange itself is a ring failure, which the
    runtime recovers from, while a mismatch is the script's mistake and must reach it.)"""
    if not dist.is_initialized():
        return None  # one process, no ring: nothing to disagree with
    world = dist.get_world_size(group)
    if world == 1:
        return None
    data = json.dumps(description, sort_keys=True, separators=(",", ":")).encode()
    mine = torch.tensor([_digest(data), len(data)], dtype=torch.int64)
    gathered = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine, group=group)
    if all(torch.equal(g, gathered[0]) for g in gathered):
        return None
    lengths = [int(g[1]) for g in gathered]
    if not 0 < max(lengths) <= MAX_DESCRIPTION_BYTES:
        return f"{what}: ranks disagree, and a peer's description is too large to compare"
    padded = torch.zeros(max(lengths), dtype=torch.uint8)
    padded[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    texts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(texts, padded, group=group)
    try:
        descriptions = [json.loads(bytes(t[:n].tolist()).decode()) for t, n in zip(texts, lengths, strict=True)]
    except ValueError:
        return f"{what}: ranks disagree, and a peer's description is not readable"
    return f"{what}: ranks disagree: {_difference(descriptions)}"


def _difference(descriptions: list[Any]) -> str:
    """The first way some rank differs from rank 0 (the same text on every rank)."""
    for rank, other in enumerate(descriptions[1:], start=1):
        found = _compare(descriptions[0], other, rank)
        if found is not None:
            return found
    return "their descriptions differ"


def _compare(ours: Any, theirs: Any, rank: int) -> str | None:
    """A tensor ({name, op, dtype, shape}) or a layout ({"tensors": [...], other settings})."""
    if not isinstance(ours, dict) or not isinstance(theirs, dict):
        return None if ours == theirs else f"rank 0 sent {ours!r}, rank {rank} sent {theirs!r}"
    if "tensors" in ours and "tensors" in theirs:
        found = _compare_tensors(ours["tensors"], theirs["tensors"], rank)
        if found is not None:
            return found
    if ours.get("name") != theirs.get("name"):
        return f"rank 0 reduces tensor {ours.get('name')!r} where rank {rank} reduces {theirs.get('name')!r}"
    label = f"tensor {ours['name']!r}: " if ours.get("name") else ""
    for key in sorted((ours.keys() | theirs.keys()) - {"name", "tensors"}):
        if ours.get(key) != theirs.get(key):
            return f"{label}{key} is {ours.get(key)!r} on rank 0 but {theirs.get(key)!r} on rank {rank}"
    return None


def _compare_tensors(mine: list[Any], others: list[Any], rank: int) -> str | None:
    """The first tensor of a layout that differs, or one that only one of the two ranks has."""
    for a, b in zip(mine, others, strict=False):
        found = _compare(a, b, rank)
        if found is not None:
            return found
    if len(mine) == len(others):
        return None
    longer, holder = (mine, "rank 0") if len(mine) > len(others) else (others, f"rank {rank}")
    extra = longer[min(len(mine), len(others))]
    name = extra.get("name") if isinstance(extra, dict) else extra
    return f"tensor {name!r} is present on {holder} only"
