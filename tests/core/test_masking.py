"""Maskers: exact counts, reproducibility under a seed, spatial structure, schedules."""

import math

import pytest
import torch
from omnimask.masking import (
    BlockMasker,
    RandomMasker,
    RatioSchedule,
    TubeMasker,
    block_mask,
    mask_count,
    random_mask,
    tube_mask,
    upsample_mask,
    upsample_mask_flat,
)
from omnimask.model import Masker
from omnimask.tokens import Tokens
from torch import nn


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def neighbour_statistics(mask: torch.Tensor, grid: tuple[int, ...]) -> tuple[float, float]:
    """(fraction of hidden cells with a hidden axis neighbour (4-neighbours in 2-D),
    fraction of the axis neighbours of hidden cells that are hidden)."""
    cells = mask.reshape(mask.shape[0], *grid)
    has_neighbour = torch.zeros_like(cells)
    hidden_pairs = 0
    pairs = 0
    for axis in range(1, cells.dim()):
        length = cells.shape[axis]
        before = cells.narrow(axis, 0, length - 1)
        after = cells.narrow(axis, 1, length - 1)
        has_neighbour.narrow(axis, 1, length - 1).logical_or_(before)
        has_neighbour.narrow(axis, 0, length - 1).logical_or_(after)
        # Each neighbouring pair counted from both of its cells.
        hidden_pairs += 2 * int((before & after).sum())
        pairs += int(before.sum() + after.sum())
    return float((cells & has_neighbour).sum() / cells.sum()), hidden_pairs / pairs


def test_mask_count_rounds_and_validates():
    assert mask_count(196, 0.75) == 147
    assert mask_count(10, 0.0) == 0 and mask_count(10, 1.0) == 10
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mask_count(10, 1.5)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.75, 1.0])
def test_random_mask_exact_counts(ratio):
    mask = random_mask(5, 49, ratio, seeded(0))
    assert mask.dtype == torch.bool and mask.device.type == "cpu" and mask.shape == (5, 49)
    assert mask.sum(dim=1).tolist() == [round(ratio * 49)] * 5


def test_random_mask_is_uniform_over_positions():
    mask = random_mask(4000, 8, 0.25, seeded(1))
    frequency = mask.float().mean(dim=0)
    assert torch.allclose(frequency, torch.full((8,), 0.25), atol=0.03)


MASKS = {
    "random": lambda g: random_mask(3, 64, 0.6, g),
    "block-1d": lambda g: block_mask(3, (64,), 0.6, g),
    "block-2d": lambda g: block_mask(3, (8, 8), 0.6, g),
    "block-3d": lambda g: block_mask(3, (4, 4, 4), 0.6, g),
    "tube": lambda g: tube_mask(3, (4, 4, 4), 0.6, g),
}


@pytest.mark.parametrize("kind", MASKS)
def test_same_seed_same_mask_different_seed_different(kind):
    draw = MASKS[kind]
    first = draw(seeded(7))
    torch.manual_seed(123)  # the global RNG must play no part
    assert torch.equal(first, draw(seeded(7)))
    assert not torch.equal(first, draw(seeded(8)))
    # Rows of one draw differ too: each row gets its own randomness.
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("grid", [(50,), (7, 9), (4, 5, 6)])
@pytest.mark.parametrize("ratio", [0.1, 0.4, 0.75, 0.95])
def test_block_mask_exact_counts(grid, ratio):
    mask = block_mask(6, grid, ratio, seeded(2))
    assert mask.dtype == torch.bool and mask.shape == (6, math.prod(grid))
    assert mask.sum(dim=1).tolist() == [round(ratio * math.prod(grid))] * 6


def test_block_mask_respects_block_sizes_and_edges():
    assert block_mask(2, (8, 8), 0.0, seeded(0)).sum() == 0
    assert block_mask(2, (8, 8), 1.0, seeded(0)).all()
    mask = block_mask(4, (10, 10), 0.5, seeded(3), min_block=4, max_block=20)
    assert mask.sum(dim=1).tolist() == [50] * 4
    with pytest.raises(ValueError, match="min_block"):
        block_mask(1, (8, 8), 0.5, seeded(0), min_block=5, max_block=2)


def test_block_mask_1d_single_span():
    # One block of exactly the target length: a single contiguous span.
    for seed in range(20):
        row = block_mask(1, (20,), 0.25, seeded(seed), min_block=5, max_block=5)[0]
        hidden = row.nonzero().flatten()
        assert len(hidden) == 5 and int(hidden[-1] - hidden[0]) == 4


@pytest.mark.parametrize("grid", [(64,), (12, 12), (6, 6, 6)])
def test_block_mask_is_clustered(grid):
    ratio, draws = 0.4, 100
    blocks = neighbour_statistics(block_mask(draws, grid, ratio, seeded(4)), grid)
    random = neighbour_statistics(random_mask(draws, math.prod(grid), ratio, seeded(4)), grid)
    assert blocks[0] > random[0], (blocks, random)
    # A random mask's neighbours are hidden at about the ratio; a block's mostly are.
    assert random[1] == pytest.approx(ratio, abs=0.05)
    assert blocks[1] > random[1] + 0.2, (blocks, random)


def test_tube_mask_repeats_over_time():
    frames, spatial = 4, (3, 5)
    mask = tube_mask(6, (frames, *spatial), 0.6, seeded(5))
    assert mask.shape == (6, frames * 15)
    per_frame = mask.view(6, frames, 15)
    assert torch.equal(per_frame, per_frame[:, :1].expand(6, frames, 15))
    assert per_frame.sum(dim=2).eq(round(0.6 * 15)).all()
    assert not torch.equal(per_frame[0, 0], per_frame[1, 0])
    with pytest.raises(ValueError, match="T, \\*spatial"):
        tube_mask(1, (16,), 0.5, seeded(0))


@pytest.mark.parametrize(
    ("coarse", "factors"), [((3,), (4,)), ((2, 3), (2, 4)), ((2, 2, 3), (3, 1, 2))]
)
def test_upsample_mask_cells_follow_their_coarse_cell(coarse, factors):
    mask = random_mask(3, math.prod(coarse), 0.5, seeded(6)).view(3, *coarse)
    fine = upsample_mask(mask, factors)
    fine_grid = tuple(c * f for c, f in zip(coarse, factors))
    assert fine.shape == (3, *fine_grid) and fine.dtype == torch.bool
    for index in torch.cartesian_prod(*[torch.arange(s) for s in fine_grid]).view(-1, len(coarse)):
        coarse_index = tuple((index // torch.tensor(factors)).tolist())
        assert torch.equal(fine[(slice(None), *index.tolist())], mask[(slice(None), *coarse_index)])
    flat = upsample_mask_flat(mask.reshape(3, -1), coarse, factors)
    assert torch.equal(flat, fine.reshape(3, -1))
    assert (
        flat.sum(dim=1).tolist() == (mask.reshape(3, -1).sum(dim=1) * math.prod(factors)).tolist()
    )
    with pytest.raises(ValueError, match="factors"):
        upsample_mask(mask, (2,) * (len(coarse) + 1))


def test_ratio_schedules():
    constant = RatioSchedule(0.75, 0.75, "constant")
    linear = RatioSchedule(0.5, 0.9, "linear")
    cosine = RatioSchedule(0.5, 0.9, "cosine")
    assert [constant(p) for p in (0.0, 0.5, 1.0)] == [0.75, 0.75, 0.75]
    assert [linear(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.5, 0.7, 0.9])
    assert [cosine(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([0.5, 0.7, 0.9])
    # Cosine moves slowly at the start: below the linear ramp in the first half.
    assert cosine(0.25) == pytest.approx(0.5 + 0.4 * (1 - math.cos(math.pi / 4)) / 2)
    assert cosine(0.25) < linear(0.25)
    assert linear(1.2) == pytest.approx(0.9) and linear(-0.1) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="start == end"):
        RatioSchedule(0.5, 0.9, "constant")
    with pytest.raises(ValueError, match="kind"):
        RatioSchedule(0.5, 0.9, "step")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="end"):
        RatioSchedule(0.5, 1.5)


def grid_tokens(batch: int, grid: tuple[int, ...] | None, num_tokens: int | None = None) -> Tokens:
    n = math.prod(grid) if grid is not None else num_tokens
    return Tokens(values=torch.zeros(batch, n, 8), grid=grid)


@pytest.mark.parametrize(
    ("masker", "grid"),
    [
        (RandomMasker(0.75), (4, 4)),
        (BlockMasker(0.5, min_block=2), (6, 6)),
        (TubeMasker(0.5), (2, 4, 4)),
    ],
)
def test_maskers_follow_the_protocol(masker, grid):
    assert isinstance(masker, Masker) and isinstance(masker, nn.Module)
    assert list(masker.parameters()) == [] and masker.state_dict() == {}
    parent = nn.Module()
    parent.masker = masker
    assert "masker" in dict(parent.named_children())
    tokens = grid_tokens(3, grid)
    mask = masker(tokens, seeded(9))
    assert mask.shape == (3, math.prod(grid)) and mask.dtype == torch.bool
    assert mask.device.type == "cpu"
    assert torch.equal(mask, masker(tokens, seeded(9)))


def test_masker_ratio_schedule_follows_progress():
    masker = RandomMasker(RatioSchedule(0.5, 0.75, "linear"))
    tokens = grid_tokens(2, None, num_tokens=40)
    assert masker.progress == 0.0 and masker.current_ratio == 0.5
    assert masker(tokens, seeded(0)).sum(dim=1).tolist() == [20, 20]
    masker.set_progress(1.0)
    assert masker.current_ratio == 0.75
    assert masker(tokens, seeded(0)).sum(dim=1).tolist() == [30, 30]
    fixed = BlockMasker(0.25)
    fixed.set_progress(0.7)
    assert fixed.current_ratio == 0.25


def test_grid_maskers_need_a_grid():
    with pytest.raises(ValueError, match="tokens.grid is None"):
        BlockMasker(0.5)(grid_tokens(1, None, num_tokens=16), seeded(0))
    with pytest.raises(ValueError, match="tokens.grid is None"):
        TubeMasker(0.5)(grid_tokens(1, None, num_tokens=16), seeded(0))
    mismatched = Tokens(values=torch.zeros(1, 15, 8), grid=(4, 4))
    with pytest.raises(ValueError, match="16 cells but there are 15 tokens"):
        BlockMasker(0.5)(mismatched, seeded(0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        RandomMasker(1.2)
