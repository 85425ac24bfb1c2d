"""A sharded data source whose position survives restarts and world-size changes: each rank takes its share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

__all__ = ["TEST_SAMPLES", "Batch", "ShardedDataSource", "accuracy", "load_digits"]


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor
    y: torch.Tensor
    #: Multiply the rank's mean loss by this, so that averaging over ranks gives the global batch's mean loss
    #: even when the batch does not split evenly (each rank's share is len(y) / global batch * world size).
    loss_scale: float


class ShardedDataSource:
    """Global batches in a per-epoch permutation; rank r of W takes the r-th of W near-equal slices.

    The position is global (epoch, samples consumed), not per rank, so any world size continues from where the
    last one stopped, and an elastic run sees exactly the samples an uninterrupted one sees. A trailing partial
    batch is dropped so that every step has the same global batch.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, global_batch: int, seed: int = 0) -> None:
        if not 0 < global_batch <= len(x):
            raise ValueError(f"global batch {global_batch} must be between 1 and the dataset size {len(x)}")
        self.x, self.y = x, y
        self.global_batch = global_batch
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        return torch.randperm(len(self.x), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    @property
    def steps_per_epoch(self) -> int:
        return len(self.x) // self.global_batch

    def batch(self, rank: int, world_size: int) -> Batch:
        """This rank's share of the current global batch (does not advance)."""
        indices = self._order[self.position : self.position + self.global_batch]
        lo = rank * self.global_batch // world_size
        hi = (rank + 1) * self.global_batch // world_size
        mine = indices[lo:hi]
        return Batch(self.x[mine], self.y[mine], len(mine) * world_size / self.global_batch)

    def advance(self) -> None:
        self.position += self.global_batch
        if self.position + self.global_batch > len(self.x):
            self.epoch += 1
            self.position = 0
            self._order = self._permutation(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)


#: Images held out of training (the last ones), on which accuracy is measured.
TEST_SAMPLES = 297


def load_digits(split: Literal["train", "test"] = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 handwritten digits (1797 images, shipped inside the package: nothing is downloaded):
    the first 1500 to train on, the last TEST_SAMPLES held out to measure accuracy."""
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    cut = len(y) - TEST_SAMPLES
    return (x[:cut], y[:cut]) if split == "train" else (x[cut:], y[cut:])


def accuracy(model: torch.nn.Module) -> float:
    """The share of held-out digits ``model`` classifies correctly."""
    x, y = load_digits("test")
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())
