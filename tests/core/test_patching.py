"""Patching against MAE's einsum formula, explicit loops, and numpy."""

import itertools
import math

import numpy as np
import pytest
import torch
from omnimask.patching import (
    grid_positions,
    patch_grid,
    patchify,
    per_patch_normalize,
    unpatchify,
)


def mae_patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """MAE's `MaskedAutoencoderViT.patchify` (models_mae.py), square patches."""
    h = w = imgs.shape[2] // p
    x = imgs.reshape(imgs.shape[0], 3, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(imgs.shape[0], h * w, p**2 * 3)


def mae_unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """MAE's `MaskedAutoencoderViT.unpatchify`."""
    h = w = int(x.shape[1] ** 0.5)
    x = x.reshape(x.shape[0], h, w, p, p, 3)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(x.shape[0], 3, h * p, h * p)


def loop_patchify(x: torch.Tensor, patch_size: tuple[int, ...]) -> torch.Tensor:
    """Reference: visit grid cells row-major, then cells in a patch row-major, then channels."""
    batch, channels, *spatial = x.shape
    grid = [s // p for s, p in zip(spatial, patch_size)]
    tokens = []
    for cell in itertools.product(*map(range, grid)):
        values = []
        for offset in itertools.product(*map(range, patch_size)):
            index = tuple(g * p + o for g, p, o in zip(cell, patch_size, offset))
            for c in range(channels):
                values.append(x[(slice(None), c, *index)])
        tokens.append(torch.stack(values, dim=1))
    return torch.stack(tokens, dim=1)


def test_patch_grid():
    assert patch_grid((224, 224), (16, 16)) == (14, 14)
    assert patch_grid((16, 32, 48), (2, 8, 16)) == (8, 4, 3)
    assert patch_grid((100,), (10,)) == (10,)


def test_patch_grid_rejects_indivisible_and_rank_mismatch():
    with pytest.raises(ValueError, match="axis 1 has 30 cells, not a multiple of 16"):
        patch_grid((32, 30), (16, 16))
    with pytest.raises(ValueError, match="2 dims"):
        patch_grid((32, 32), (16,))
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.zeros(1, 3, 10, 12), (4, 4))


def test_patchify_2d_matches_mae_einsum():
    imgs = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = patchify(imgs, (8, 8))
    assert ours.shape == (2, 16, 8 * 8 * 3)
    torch.testing.assert_close(ours, mae_patchify(imgs, 8), rtol=0, atol=0)
    torch.testing.assert_close(unpatchify(ours, (8, 8), (4, 4), 3), mae_unpatchify(ours, 8))


@pytest.mark.parametrize(
    ("spatial", "patch_size", "channels"),
    [((12,), (4,), 2), ((6, 8), (2, 4), 3), ((4, 6, 4), (2, 3, 2), 2)],
)
def test_patchify_matches_loops_and_round_trips(spatial, patch_size, channels):
    x = torch.randn(2, channels, *spatial, generator=torch.Generator().manual_seed(1))
    patches = patchify(x, patch_size)
    grid = patch_grid(spatial, patch_size)
    assert patches.shape == (2, math.prod(grid), math.prod(patch_size) * channels)
    torch.testing.assert_close(patches, loop_patchify(x, patch_size), rtol=0, atol=0)
    torch.testing.assert_close(unpatchify(patches, patch_size, grid, channels), x, rtol=0, atol=0)


def test_unpatchify_rejects_wrong_shape():
    with pytest.raises(ValueError, match="expected patches"):
        unpatchify(torch.zeros(1, 16, 48), (4, 4), (4, 3), 3)


def test_grid_positions_follow_token_order():
    positions = grid_positions((2, 3, 4))
    assert positions.dtype == torch.long
    assert positions.tolist() == [
        list(cell) for cell in itertools.product(range(2), range(3), range(4))
    ]
    assert grid_positions((5,)).tolist() == [[i] for i in range(5)]


def test_grid_positions_locate_patch_contents():
    # Token n of patchify is the patch at grid_positions[n]: a signal equal to its own grid row
    # index makes every value of token n equal that row index.
    grid, patch = (3, 4), (2, 2)
    rows = torch.arange(grid[0]).repeat_interleave(patch[0]).float()
    x = rows.view(1, 1, -1, 1).expand(1, 1, 6, 8)
    patches = patchify(x, patch)
    positions = grid_positions(grid)
    torch.testing.assert_close(patches[0, :, 0], positions[:, 0].float())


def test_per_patch_normalize_matches_numpy():
    patches = torch.randn(2, 5, 12, generator=torch.Generator().manual_seed(2)) * 3 + 1
    ours = per_patch_normalize(patches)
    array = patches.double().numpy()
    mean = array.mean(axis=-1, keepdims=True)
    var = array.var(axis=-1, ddof=1, keepdims=True)
    expected = (array - mean) / np.sqrt(var + 1e-6)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-5, atol=1e-5)
    constant = per_patch_normalize(torch.full((1, 1, 4), 7.0), eps=1e-6)
    assert torch.equal(constant, torch.zeros(1, 1, 4))
