"""What a joining worker accepts from a peer: tensors and checked JSON, never a pickle."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from training_worker.tree import TreeRefused, decode_skeleton, encode_skeleton

pytestmark = pytest.mark.worker


def test_a_training_state_survives_the_trip_with_its_types() -> None:
    # given what a TorchState holds: int-keyed optimizer state, tuples (betas, the Python RNG), non-finite floats
    tree = {
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.999), "lr": 0.1}]},
        "rng": (3, tuple(range(5)), None),
        "values": {"best": float("inf"), "name": "run", "ok": True},
    }
    tensors: list[torch.Tensor] = []
    # when it is encoded and decoded
    skeleton, slots = decode_skeleton(encode_skeleton(tree, tensors))
    # then the structure and types come back, and each tensor is a slot of the right shape and dtype
    assert skeleton["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert isinstance(skeleton["rng"], tuple) and skeleton["rng"][1] == (0, 1, 2, 3, 4)
    assert 0 in skeleton["optimizer"]["state"] and math.isinf(skeleton["values"]["best"])
    assert [(shape, dtype) for _, shape, dtype, _ in slots] == [((), torch.float32)] and len(tensors) == 1


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (pickle.dumps({"model": 1}), "not JSON"),
        (b'{"__reduce__": ["os.system", ["true"]]}', "unexpected object"),
        (b'{"$tensor": 0, "shape": [2], "dtype": "object", "device": "cpu"}', "dtype"),
        (b'{"$tensor": 3, "shape": [2], "dtype": "float32", "device": "cpu"}', "out of order"),
        (b'{"$tensor": 0, "shape": [-1], "dtype": "float32", "device": "cpu"}', "shape"),
        (b'{"$dict": [[["a"], 1]]}', "plain key"),
    ],
)
def test_anything_else_a_peer_sends_is_refused_with_the_reason(payload: bytes, why: str) -> None:
    with pytest.raises(TreeRefused, match=why):
        decode_skeleton(payload)


def test_a_state_holding_an_arbitrary_object_is_refused_at_the_sender() -> None:
    with pytest.raises(TypeError, match="give objects a state_dict"):
        encode_skeleton({"callback": object()}, [])
