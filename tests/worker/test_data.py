"""The sharded data source: every rank its share, and a position that survives restarts and world-size changes."""

from __future__ import annotations

import torch

from training_worker.data import ShardedDataSource, load_digits


def _source() -> ShardedDataSource:
    x = torch.arange(50, dtype=torch.float32).unsqueeze(1)
    return ShardedDataSource(x, torch.arange(50), global_batch=12, seed=3)


def _seen(source: ShardedDataSource, steps: int, world: int) -> list[int]:
    seen = []
    for _ in range(steps):
        for rank in range(world):
            seen += source.batch(rank, world).y.tolist()
        source.advance()
    return seen


def test_an_epoch_changing_world_size_midway_sees_each_sample_once() -> None:
    # given a source read by 3 ranks for 2 steps, saved, and restored into a fresh source read by 2 ranks
    first = _source()
    seen = _seen(first, 2, world=3)
    second = _source()
    second.load_state_dict(first.state_dict())
    seen += _seen(second, 2, world=2)
    # then the epoch's 4 global batches hold 48 distinct samples: none skipped twice, none repeated
    assert len(seen) == len(set(seen)) == 48
    # and they are exactly the samples an uninterrupted single rank sees
    assert seen == _seen(_source(), 4, world=1)


def test_uneven_shares_are_weighted_so_the_mean_loss_is_the_global_mean() -> None:
    # given a global batch of 12 split over 5 ranks (shares 2, 2, 3, 2, 3)
    source = _source()
    shares = [source.batch(r, 5) for r in range(5)]
    # then the shares' mean of (local mean * loss_scale) equals the global mean
    weighted = sum(float(b.x.mean()) * b.loss_scale for b in shares) / 5
    assert abs(weighted - float(torch.cat([b.x for b in shares]).mean())) < 1e-5
    assert sorted(len(b.y) for b in shares) == [2, 2, 2, 3, 3]


def test_the_next_epoch_is_a_new_permutation() -> None:
    source = _source()
    _seen(source, source.steps_per_epoch, world=1)
    assert source.epoch == 1 and source.position == 0


def test_digits_hold_out_a_test_split_that_training_never_sees() -> None:
    train_x, _ = load_digits()
    test_x, test_y = load_digits("test")
    assert train_x.shape == (1500, 64) and test_x.shape == (297, 64)
    assert set(test_y.tolist()) == set(range(10)), "every digit is in the held-out split"
    seen = {tuple(row) for row in train_x.tolist()}
    assert sum(tuple(row) in seen for row in test_x.tolist()) < len(test_x) // 10
