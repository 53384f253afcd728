"""Seed derivation and the counter-based per-sample uniform generator."""

import torch
from omnimask.masking import RandomMasker, TubeMasker
from omnimask.model import MaskedModel
from omnimask.seeding import mix_seed, sample_generators, sample_seeds, sample_uniform, seeded_rng
from omnimask.tokens import Tokens
from scipy import stats


def test_mix_seed_is_stable_and_separates_its_inputs() -> None:
    assert mix_seed(1, 2, 3) == mix_seed(1, 2, 3)
    seeds = {mix_seed(seed, step) for seed in range(30) for step in range(300)}
    assert len(seeds) == 30 * 300
    assert mix_seed(0, 1) != mix_seed(1, 0) and mix_seed(5) != mix_seed(5, 0)
    assert all(0 <= s < 2**63 for s in seeds)


def test_sample_uniform_is_uniform_and_row_independent() -> None:
    values = sample_uniform(torch.arange(200), 500)
    assert values.shape == (200, 500) and values.dtype == torch.float32
    assert 0.0 <= float(values.min()) and float(values.max()) < 1.0
    # Kolmogorov-Smirnov against U(0, 1) over 1e5 draws.
    assert stats.kstest(values.flatten().numpy(), "uniform").pvalue > 1e-3
    # Neighbouring counters and neighbouring seeds are uncorrelated.
    assert (
        abs(torch.corrcoef(torch.stack([values[:, :-1].flatten(), values[:, 1:].flatten()]))[0, 1])
        < 0.02
    )
    assert (
        abs(torch.corrcoef(torch.stack([values[:-1].flatten(), values[1:].flatten()]))[0, 1]) < 0.02
    )
    # A row depends on its seed only, not on its batch.
    again = sample_uniform(torch.tensor([17, 3]), 500)
    assert torch.equal(again[0], values[17]) and torch.equal(again[1], values[3])


def test_per_sample_masks_do_not_depend_on_the_batch() -> None:
    for masker, grid in ((RandomMasker(0.6), (20,)), (TubeMasker(0.75), (4, 3, 3))):
        model = MaskedModel(torch.nn.Identity(), masker, None, None, None)  # type: ignore[arg-type]
        tokens = Tokens(values=torch.zeros(6, torch.Size(grid).numel(), 2), grid=grid)
        generator = torch.Generator().manual_seed(9)
        whole = model.draw_mask(tokens, {"sample_id": torch.arange(6)}, generator)
        part = model.draw_mask(
            tokens.rows(slice(2, 4)), {"sample_id": torch.tensor([2, 3])}, generator
        )
        assert torch.equal(whole[2:4], part)
        assert len({tuple(row.tolist()) for row in whole}) == 6  # rows differ
    tube = whole.view(6, 4, 9)
    assert (tube == tube[:, :1]).all() and (tube[:, 0].sum(1) == 7).all()  # round(0.75 * 9)


def test_sample_seeds_follow_sample_ids_and_salt() -> None:
    step = torch.Generator().manual_seed(7)
    ids = torch.tensor([4, 9, 2])
    assert sample_seeds(ids, step) == [mix_seed(7, 4), mix_seed(7, 9), mix_seed(7, 2)]
    assert sample_seeds(ids, step, 5) == [mix_seed(7, 5, 4), mix_seed(7, 5, 9), mix_seed(7, 5, 2)]
    assert sample_seeds(None, None, rows=2) == [mix_seed(0, 0), mix_seed(0, 1)]
    # A sample draws the same numbers wherever it sits in a batch.
    first = [torch.rand(4, generator=g) for g in sample_generators(ids, step)]
    again = sample_generators(ids[1:], step)
    assert all(torch.equal(torch.rand(4, generator=g), first[1:][i]) for i, g in enumerate(again))


def test_seeded_rng_restores_the_torch_stream() -> None:
    torch.manual_seed(4)
    expected = torch.rand(3)
    torch.manual_seed(4)
    with seeded_rng(123):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with seeded_rng(123):
        assert torch.equal(torch.rand(3), inside)
