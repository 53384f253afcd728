"""Length-bucketed batches: epoch coverage, padding against plain batches, exact resumption and
process splits (sampler level), and a bucketed engine run resumed from a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from omnimask.config import ConfigError, apply_overrides
from omnimask.engine import Engine
from omnimask.engine.checkpoint import list_checkpoints
from omnimask.engine.metrics import read_metrics
from omnimask.engine.sampler import BucketedBatchSampler, ResumableBatchSampler, padding_fraction
from toy_recipe import ToyRecipe


def skewed_lengths(count: int, seed: int = 0) -> list[int]:
    """Log-normal lengths (many short samples, a long tail, as speech and text corpora have),
    capped at 4x the median as a crop length caps them."""
    generator = torch.Generator().manual_seed(seed)
    lengths = 20 * torch.exp(0.6 * torch.randn(count, generator=generator))
    return lengths.clamp(max=80).long().add(1).tolist()


def bucketed(lengths: list[int], batch: int, stop: int, **options) -> BucketedBatchSampler:
    options = {"bucket_batches": 4, "seed": 7, "start": 0, **options}
    return BucketedBatchSampler(lengths, batch, stop=stop, **options)


@pytest.mark.parametrize("count", [96, 100])
def test_each_epoch_is_full_batches_of_distinct_samples_from_the_plain_permutation(
    count: int,
) -> None:
    """Every sample once per epoch when G divides N; otherwise the N % G left over are the end of
    the plain sampler's permutation of that epoch, and no sample repeats within the epoch."""
    lengths = skewed_lengths(count)
    sampler = bucketed(lengths, 8, stop=3 * (count // 8))
    plain = ResumableBatchSampler(count, 8, seed=7, start=0, stop=1)
    assert sampler.batches_per_epoch == count // 8
    batches = list(sampler)
    assert all(len(batch) == 8 for batch in batches)
    for epoch in range(3):
        indices = [i for batch in batches for i, e in batch if e == epoch]
        assert len(indices) == len(set(indices)) == 8 * (count // 8)
        assert sorted(indices) == sorted(plain.order(epoch, range(8 * (count // 8))).tolist())
    left_out = [set(range(count)) - {i for b in batches for i, e in b if e == n} for n in range(3)]
    assert all(len(s) == count % 8 for s in left_out)
    if count % 8:
        assert left_out[0] != left_out[1]  # a different few wait each epoch


def test_bucketed_batches_cut_padding_and_are_the_sorted_cut_of_each_mega_batch() -> None:
    lengths = skewed_lengths(512)
    sampler = bucketed(lengths, 8, stop=64, bucket_batches=8)
    plain = ResumableBatchSampler(512, 8, seed=7, start=0, stop=64)
    as_indices = lambda batches: [[i for i, _ in batch] for batch in batches]  # noqa: E731
    bucketed_padding = padding_fraction(lengths, as_indices(sampler))
    plain_padding = padding_fraction(lengths, as_indices(plain))
    assert plain_padding > 0.4  # the skewed distribution pads a lot when batched at random
    assert bucketed_padding < 0.4 * plain_padding
    # Brute-force reference: each mega-batch (64 consecutive entries of the epoch's permutation),
    # sorted by length and cut into 8 batches, gives the same length profile as the sampler.
    order = plain.order(0, range(512)).tolist()
    batches = as_indices(sampler)
    for start in range(0, 512, 64):
        mega = set(order[start : start + 64])
        members = [sorted(lengths[i] for i in b) for b in batches if set(b) <= mega]
        assert len(members) == 8
        expected = sorted(lengths[i] for i in mega)
        assert sorted(members) == [expected[j : j + 8] for j in range(0, 64, 8)]
    # Batch order is shuffled: the batches are not in ascending length order within an epoch.
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest)


def test_bucketed_sampler_is_deterministic_and_seeded() -> None:
    lengths = skewed_lengths(100)
    assert list(bucketed(lengths, 8, stop=40)) == list(bucketed(lengths, 8, stop=40))
    assert list(bucketed(lengths, 8, stop=40)) != list(bucketed(lengths, 8, stop=40, seed=8))


def test_bucketed_sampler_resumes_at_any_batch() -> None:
    lengths = skewed_lengths(100)
    whole = list(bucketed(lengths, 8, stop=40))  # 12 batches per epoch: 3+ epochs
    for start in (0, 5, 11, 12, 13, 30):
        assert list(bucketed(lengths, 8, start=start, stop=40)) == whole[start:]
        assert bucketed(lengths, 8, stop=1).batch_keys(start) == whole[start]


@pytest.mark.parametrize("replicas", [2, 3])
def test_rank_slices_of_the_bucketed_sampler_make_the_global_batch(replicas: int) -> None:
    lengths = skewed_lengths(100)
    single = list(bucketed(lengths, 2 * replicas, stop=30))
    ranks = [
        list(bucketed(lengths, 2, stop=30, num_replicas=replicas, rank=rank))
        for rank in range(replicas)
    ]
    for whole, *parts in zip(single, *ranks, strict=True):
        assert whole == [key for part in parts for key in part]


def test_bucketed_sampler_edge_cases() -> None:
    tiny = bucketed([5, 3, 9], 4, stop=3)  # smaller than one batch: cycled, one batch per epoch
    assert tiny.batches_per_epoch == 1
    assert all(sorted({i for i, _ in batch}) == [0, 1, 2] for batch in tiny)
    ordered = bucketed([4, 1, 3, 2, 8, 7, 6, 5], 2, stop=4, shuffle=False, bucket_batches=2)
    assert [[i for i, _ in batch] for batch in ordered] == [[1, 3], [2, 0], [7, 6], [5, 4]]
    with pytest.raises(ValueError, match="bucket_batches"):
        bucketed([1, 2], 1, stop=1, bucket_batches=0)
    with pytest.raises(ValueError, match="empty"):
        bucketed([], 1, stop=1)


class BucketedToyRecipe(ToyRecipe):
    """The toy recipe with (made-up, fixed) sample lengths, which turns bucketing on."""

    def sample_lengths(self, dataset, config) -> list[int]:  # noqa: ANN001
        return skewed_lengths(len(dataset), seed=3)


def train(recipe: ToyRecipe, run_dir: Path, *overrides: str) -> list[float]:
    config = apply_overrides(recipe.config("demo"), ["data.bucket_batches=2", *overrides])
    Engine(recipe, config, run_dir).run()
    metrics = read_metrics(run_dir / "metrics.jsonl")
    return [metrics[step]["loss"] for step in sorted(metrics)]


def test_bucketed_run_resumed_from_a_checkpoint_matches_the_uninterrupted_run(tmp_path) -> None:
    recipe = BucketedToyRecipe()
    reference = train(recipe, tmp_path / "reference")
    plain = train(recipe, tmp_path / "plain", "data.bucket_batches=0")
    assert reference != plain  # bucketing changed which samples share a batch

    run = tmp_path / "run"
    train(recipe, run)
    for step, path in list_checkpoints(run / "checkpoints"):
        if step > 4:  # as if the run had died just after its step-4 checkpoint
            shutil.rmtree(path)
    assert train(recipe, run) == reference
    newest = lambda d: list_checkpoints(d / "checkpoints")[0][1] / "model.safetensors"  # noqa: E731
    assert newest(run).read_bytes() == newest(tmp_path / "reference").read_bytes()


def test_bucketing_without_sample_lengths_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="gives none"):
        train(ToyRecipe(), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_bucketed_sampler_computes_each_mega_batch_once(monkeypatch) -> None:  # noqa: ANN001
    """Consecutive batches stay within one mega-batch (in shuffled order), so a sampler computes
    each of an epoch's mega-batches once rather than one per batch."""
    lengths = skewed_lengths(200)
    sampler = bucketed(lengths, 8, stop=50)  # 25 batches per epoch: mega-batches of 4, 4, ..., 1
    computed = []
    original = sampler._lengths_of
    monkeypatch.setattr(sampler, "_lengths_of", lambda i: computed.append(1) or original(i))
    batches = [[i for i, _ in batch] for batch in sampler]
    assert len(computed) == 2 * 7
    lengths_of = lambda batch: sorted(lengths[i] for i in batch)  # noqa: E731
    firsts = [lengths_of(b) for b in batches[:4]]
    assert firsts != sorted(firsts)  # the mega-batch's batches are not in length order
