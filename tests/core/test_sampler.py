"""The samplers' seeded permutation (a bijection of [0, n), keyed, well mixed) and the memory the
samplers hold at a real corpus size."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from omnimask.engine.sampler import BucketedBatchSampler, ResumableBatchSampler, SeededPermutation
from scipy import stats

LARGE = 100_000_000


@pytest.mark.parametrize("size", [1, 2, 3, 5, 16, 17, 100, 1000, 4097, 65_536, 100_003])
def test_seeded_permutation_is_a_bijection_of_the_range(size: int) -> None:
    values = SeededPermutation(size, key=11)(np.arange(size))
    assert values.dtype == np.int64
    assert np.array_equal(np.sort(values), np.arange(size))
    # Any positions, in any order and any batch, map as they do in one pass over the range.
    positions = np.random.default_rng(0).integers(0, size, 50)
    assert np.array_equal(SeededPermutation(size, key=11)(positions), values[positions])


def test_seeded_permutation_is_deterministic_per_key_and_differs_across_keys() -> None:
    size = 1000
    first = SeededPermutation(size, key=3)(np.arange(size))
    assert np.array_equal(first, SeededPermutation(size, key=3)(np.arange(size)))
    others = [SeededPermutation(size, key=key)(np.arange(size)) for key in range(4, 12)]
    assert all(not np.array_equal(first, other) for other in others)
    # Different keys give unrelated orders, not shifts of each other: few common positions.
    assert max(int((first == other).sum()) for other in others) < 10


def test_sampler_epochs_are_different_permutations_of_the_samples() -> None:
    sampler = ResumableBatchSampler(1000, 10, seed=5, start=0, stop=1)
    epochs = [sampler.order(epoch, range(1000)) for epoch in range(4)]
    assert all(np.array_equal(np.sort(order), np.arange(1000)) for order in epochs)
    assert all(not np.array_equal(a, b) for i, a in enumerate(epochs) for b in epochs[i + 1 :])
    other_seed = ResumableBatchSampler(1000, 10, seed=6, start=0, stop=1).order(0, range(1000))
    assert not np.array_equal(other_seed, epochs[0])


@pytest.mark.parametrize("size", [100_000, 70_001])  # a full even-bit domain, and cycle-walking
def test_seeded_permutation_is_well_mixed(size: int) -> None:
    values = SeededPermutation(size, key=1)(np.arange(size))
    positions = np.arange(size)
    assert abs(np.corrcoef(positions, values)[0, 1]) < 0.02
    assert abs(np.corrcoef(values[:-1], values[1:])[0, 1]) < 0.02  # neighbours unrelated
    # Position block vs value block: a 16 x 16 table, uniform if the order is well mixed.
    table = np.histogram2d(positions, values, bins=16)[0]
    assert stats.chi2_contingency(table).pvalue > 1e-3
    # The distance a sample moves is spread like that of a uniformly random permutation.
    moved = np.abs(values - positions) / size
    reference = np.abs(np.random.default_rng(0).permutation(size) - positions) / size
    assert stats.ks_2samp(moved, reference).pvalue > 1e-3


def test_seeded_permutation_of_a_small_range_is_uniform_over_keys() -> None:
    """For 5 elements, each element lands at position 0 about equally often over 5000 keys."""
    firsts = [int(SeededPermutation(5, key=key)([0])[0]) for key in range(5000)]
    assert stats.chisquare(np.bincount(firsts, minlength=5)).pvalue > 1e-3


def test_seeded_permutation_rejects_positions_outside_its_range() -> None:
    with pytest.raises(IndexError, match=r"\[0, 10\)"):
        SeededPermutation(10, key=0)([10])
    with pytest.raises(ValueError, match="at least one"):
        SeededPermutation(0, key=0)


def test_batches_do_not_depend_on_where_a_run_starts_or_how_it_is_split() -> None:
    """Batches are computed a window at a time; a resumed or split run sees the same ones."""
    whole = list(ResumableBatchSampler(5000, 24, seed=2, start=0, stop=700))  # 3+ epochs
    for start in (1, 63, 64, 65, 208, 415):
        resumed = ResumableBatchSampler(5000, 24, seed=2, start=start, stop=700)
        assert list(resumed) == whole[start:]
    ranks = [
        list(ResumableBatchSampler(5000, 8, seed=2, start=5, stop=700, num_replicas=3, rank=r))
        for r in range(3)
    ]
    assert [a + b + c for a, b, c in zip(*ranks, strict=True)] == whole[5:]
    first_epoch = [index for batch in whole[:209] for index, epoch in batch if epoch == 0]
    assert sorted(first_epoch) == list(range(5000))


def resident_bytes() -> int:
    """This process's resident memory (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm")
@pytest.mark.parametrize("bucketed", [False, True], ids=["plain", "bucketed"])
def test_a_sampler_of_a_100m_sample_corpus_holds_little_memory(bucketed: bool) -> None:
    """Building a sampler over 100M samples and taking its first batches allocates under 100 MB:
    Python and numpy allocations through tracemalloc, and (torch's allocations escape
    tracemalloc) what it adds to the resident memory, which is all the old samplers kept."""
    lengths = np.zeros(LARGE, dtype=np.int64)  # untouched zero pages: no resident memory yet
    resident = resident_bytes()
    placement = {"seed": 0, "start": 0, "stop": 3, "num_replicas": 4}
    tracemalloc.start()
    try:
        if bucketed:
            sampler = BucketedBatchSampler(lengths, 256, bucket_batches=64, **placement)
        else:
            sampler = ResumableBatchSampler(LARGE, 256, **placement)
        batches = list(sampler)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [len(batch) for batch in batches] == [256] * 3
    assert peak < 100 * 2**20
    assert resident_bytes() - resident < 100 * 2**20
