"""ElasticSampler: every rank its share of a constant global batch, and a position that survives world changes."""

from __future__ import annotations

import pytest
import torch

from training_worker.elastic import ElasticSampler

pytestmark = pytest.mark.worker

DATASET = list(range(50))


def _sampler() -> ElasticSampler:
    return ElasticSampler(DATASET, global_batch_size=12, seed=3)


def _seen(state: dict[str, int], steps: int, world: int) -> tuple[list[int], dict[str, int]]:
    """What ``world`` ranks, each with a sampler restored from ``state``, read in ``steps`` global steps."""
    seen: list[int] = []
    samplers = []
    for _ in range(world):
        sampler = _sampler()
        sampler.load_state_dict(state)
        samplers.append(sampler)
    for _ in range(steps):
        for rank, sampler in enumerate(samplers):
            seen += sampler.share(rank, world)[0]
    end = _sampler()
    end.load_state_dict(state)
    end.position += steps
    return seen, end.state_dict()


def test_an_epoch_changing_world_size_midway_sees_each_sample_once() -> None:
    # given 2 global steps read by 3 ranks, then the position handed to 2 ranks for 2 more
    seen, state = _seen(_sampler().state_dict(), 2, world=3)
    more, _ = _seen(state, 2, world=2)
    seen += more
    # then the epoch's 4 global batches hold 48 distinct samples: none skipped, none repeated
    assert len(seen) == len(set(seen)) == 48
    # and they are exactly the samples an uninterrupted single rank sees, in the same global batches
    alone, _ = _seen(_sampler().state_dict(), 4, world=1)
    assert seen == alone


def test_uneven_shares_are_weighted_so_the_averaged_gradient_is_the_global_batch_mean() -> None:
    # given a global batch of 12 split over 5 ranks (shares 2, 2, 2, 3, 3)
    values = torch.arange(50, dtype=torch.float32)
    shares = [_sampler().share(rank, 5) for rank in range(5)]
    # then the ranks' average of (local mean x weight), which the DistributedOptimizer computes, is the global mean
    averaged = sum(float(values[idx].mean()) * weight for idx, weight in shares) / 5
    everything = [i for idx, _ in shares for i in idx]
    assert abs(averaged - float(values[everything].mean())) < 1e-5
    assert sorted(len(idx) for idx, _ in shares) == [2, 2, 2, 3, 3]


def test_set_epoch_resumes_a_half_done_epoch_and_starts_a_new_one_from_its_beginning() -> None:
    sampler = _sampler()
    first = list(sampler)
    assert len(first) == sampler.batches_per_epoch == 4 and len(sampler) == 0
    # when the same epoch is set again (a resumed training loop does), nothing of it is read twice
    sampler.set_epoch(0)
    assert list(sampler) == []
    # when the next epoch starts, it is a new permutation read from its beginning
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(second) == 4 and second != first
