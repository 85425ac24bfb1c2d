"""Moving a training state between ranks without trusting the sender: tensors as tensors, the rest as checked JSON.

A joining worker takes its state from a peer (``TorchState.sync``), and ``broadcast_object`` hands a user's object
around. Nothing a peer sends is unpickled: the tree's structure travels as JSON in a tagged form (tuples, dicts
with non-string keys, tensor slots), checked field by field before anything is allocated, and the tensors travel
as one coalesced buffer per dtype, so a model's and optimizer's state costs one broadcast per dtype.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["TreeRefused", "broadcast_tree", "decode_skeleton", "encode_skeleton"]

#: The dtypes a tensor slot may name.
_DTYPES = {
    str(dtype).removeprefix("torch."): dtype
    for dtype in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
        torch.complex128,
    )
}
#: Largest structure accepted (the tensors' bytes travel beside it, not in it).
MAX_SKELETON_BYTES = 64 << 20


class TreeRefused(ValueError):
    """What a peer sent is not a tree this module writes: refused before anything of it is used."""


def _tensor_slot(node: torch.Tensor, tensors: list[torch.Tensor]) -> dict[str, Any]:
    """``encode_skeleton``'s slot for one tensor (appended to ``tensors``), apart so its ``encode`` stays a dispatch."""
    tensors.append(node.detach())
    dtype = str(node.dtype).removeprefix("torch.")
    if dtype not in _DTYPES:
        raise TypeError(f"cannot send a tensor of dtype {node.dtype}")
    return {"$tensor": len(tensors) - 1, "shape": list(node.shape), "dtype": dtype, "device": node.device.type}


def encode_skeleton(tree: Any, tensors: list[torch.Tensor]) -> bytes:
    """The JSON of ``tree`` with each tensor replaced by a slot (appended to ``tensors``)."""

    def encode(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            return _tensor_slot(node, tensors)
        if isinstance(node, dict):
            return {"$dict": [[encode(k), encode(v)] for k, v in node.items()]}
        if isinstance(node, tuple):
            return {"$tuple": [encode(v) for v in node]}
        if isinstance(node, list):
            return [encode(v) for v in node]
        if isinstance(node, float) and not math.isfinite(node):
            return {"$float": repr(node)}
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise TypeError(
            f"cannot send a {type(node).__name__} between ranks: state is made of tensors, numbers, strings, "
            "lists, tuples and dicts (give objects a state_dict())"
        )

    return json.dumps(encode(tree), allow_nan=False, separators=(",", ":")).encode()


def decode_skeleton(data: bytes) -> tuple[Any, list[Slot]]:
    """The structure ``encode_skeleton`` wrote and its tensor slots (index, shape, dtype, device), in index order;
    raises TreeRefused naming what is wrong with anything else."""
    if len(data) > MAX_SKELETON_BYTES:
        raise TreeRefused(f"state structure of {len(data)} bytes, more than {MAX_SKELETON_BYTES}")
    try:
        raw = json.loads(data)
    except ValueError as e:
        raise TreeRefused(f"state structure is not JSON: {e}") from e
    decoder = _SkeletonDecoder()
    return decoder.decode(raw, 0), decoder.slots


Slot = tuple[int, tuple[int, ...], torch.dtype, str]


class _SkeletonDecoder:
    """Turns the JSON of ``encode_skeleton`` back into the structure, refusing anything it would not have written."""

    def __init__(self) -> None:
        self.slots: list[Slot] = []

    def decode(self, node: Any, depth: int) -> Any:
        if depth > 64:
            raise TreeRefused("state structure nested more than 64 deep")
        if isinstance(node, list):
            return [self.decode(v, depth + 1) for v in node]
        if isinstance(node, dict):
            return self._object(node, depth)
        if node is None or isinstance(node, bool | int | float | str):
            return node
        raise TreeRefused(f"unexpected {type(node).__name__} in the state structure")

    def _object(self, node: dict[str, Any], depth: int) -> Any:
        keys = set(node)
        if keys == {"$tensor", "shape", "dtype", "device"}:
            return self._tensor(node)
        if keys == {"$dict"} and isinstance(node["$dict"], list):
            return self._dict(node["$dict"], depth)
        if keys == {"$tuple"} and isinstance(node["$tuple"], list):
            return tuple(self.decode(v, depth + 1) for v in node["$tuple"])
        if keys == {"$float"} and node["$float"] in ("nan", "inf", "-inf"):
            return float(node["$float"])
        raise TreeRefused(f"unexpected object with keys {sorted(node)[:5]} in the state structure")

    def _tensor(self, node: dict[str, Any]) -> _Slot:
        index, shape, dtype, device = node["$tensor"], node["shape"], node["dtype"], node["device"]
        if not isinstance(index, int) or index != len(self.slots):
            raise TreeRefused(f"tensor slot {index!r} out of order")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise TreeRefused(f"tensor slot {index} has shape {shape!r}")
        if dtype not in _DTYPES or device not in ("cpu", "cuda"):
            raise TreeRefused(f"tensor slot {index} has dtype {dtype!r} on {device!r}")
        self.slots.append((index, tuple(shape), _DTYPES[dtype], device))
        return _Slot(index)

    def _dict(self, pairs: list[Any], depth: int) -> dict[Any, Any]:
        out = {}
        for pair in pairs:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], str | int | bool):
                raise TreeRefused(f"dict entry {pair!r:.80} is not a [key, value] pair with a plain key")
            out[pair[0]] = self.decode(pair[1], depth + 1)
        return out


class _Slot:
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _broadcast_bytes(data: bytes | None, src: int, group: dist.ProcessGroup | None) -> bytes:
    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64)
    dist.broadcast(size, src=src, group=group)
    n = int(size.item())
    if n < 0 or n > MAX_SKELETON_BYTES:
        raise TreeRefused(f"state structure of {n} bytes announced")
    buffer = (
        torch.frombuffer(bytearray(data), dtype=torch.uint8) if data is not None else torch.empty(n, dtype=torch.uint8)
    )
    dist.broadcast(buffer, src=src, group=group)
    return buffer.numpy().tobytes()


def _broadcast_kind(
    tensors: list[torch.Tensor],
    indices: list[int],
    dtype: torch.dtype,
    device_type: str,
    is_root: bool,
    src: int,
    group: dist.ProcessGroup | None,
) -> None:
    """One broadcast for all the tensors of one dtype and device (``indices`` into ``tensors``), copied back into
    them on the other ranks: one collective per kind instead of one per tensor."""
    if is_root:
        flat = torch.cat([tensors[i].reshape(-1) for i in indices])
    else:
        flat = torch.empty(sum(tensors[i].numel() for i in indices), dtype=dtype, device=device_type)
    dist.broadcast(flat, src=src, group=group)
    if not is_root:
        offset = 0
        for i in indices:
            n = tensors[i].numel()
            tensors[i].copy_(flat[offset : offset + n].view_as(tensors[i]))
            offset += n


def broadcast_tree(tree: Any, root: int, group: dist.ProcessGroup | None = None) -> Any:
    """Broadcasts a nest of dicts/lists/tuples holding tensors and plain values from ``root`` to every rank; returns
    the tree on every rank (the root gets its own tree back)."""
    rank = dist.get_rank(group)
    src = dist.get_global_rank(group, root) if group else root
    tensors: list[torch.Tensor] = []
    data = encode_skeleton(tree, tensors) if rank == root else None
    skeleton, slots = decode_skeleton(_broadcast_bytes(data, src, group))
    if rank != root:
        tensors = [torch.empty(shape, dtype=dtype, device=device) for _, shape, dtype, device in slots]
    elif len(tensors) != len(slots):
        raise TreeRefused("the structure names other tensors than were sent")
    by_kind: dict[tuple[torch.dtype, str], list[int]] = {}
    for i, t in enumerate(tensors):
        by_kind.setdefault((t.dtype, t.device.type), []).append(i)
    for (dtype, device_type), indices in sorted(by_kind.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        _broadcast_kind(tensors, indices, dtype, device_type, rank == root, src, group)
    if rank == root:
        return tree

    def rebuild(node: Any) -> Any:
        if isinstance(node, _Slot):
            return tensors[node.index]
        if isinstance(node, dict):
            return {k: rebuild(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return type(node)(rebuild(v) for v in node)
        return node

    return rebuild(skeleton)
