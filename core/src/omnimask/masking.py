"""Generic maskers on token grids of any rank: random, block (spans/rectangles/cuboids), tube.

Every mask is a CPU bool tensor, True = hidden from the encoder, flattened row-major over the grid
like `omnimask.patching.patchify` orders tokens. All randomness comes from an explicit CPU
`torch.Generator`, so a seed reproduces a mask exactly, on any device the model later runs on.
Every row hides exactly `mask_count(N, ratio)` tokens, which is what MAE-style gathering of the
visible tokens (`omnimask.gather`) needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from omnimask.seeding import sample_uniform
from omnimask.tokens import Tokens

# BEiT's blockwise masking draws block aspect ratios from [0.3, 1 / 0.3].
_MIN_ASPECT = 0.3


def mask_count(num_tokens: int, ratio: float) -> int:
    """How many of `num_tokens` a mask of `ratio` hides: `round(ratio * num_tokens)`."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    return round(ratio * num_tokens)


def random_mask(
    batch_size: int, num_tokens: int, ratio: float, generator: torch.Generator
) -> Tensor:
    """Uniformly random bool mask `[B, N]` hiding exactly `mask_count(N, ratio)` tokens per row.

    As in MAE: the tokens with the smallest uniform noise are hidden (argsort of noise), which
    gives every subset of that size the same probability.
    """
    noise = torch.rand(batch_size, num_tokens, generator=generator)
    return mask_from_noise(noise, mask_count(num_tokens, ratio))


def mask_from_noise(noise: Tensor, num_masked: int) -> Tensor:
    """Hide the `num_masked` tokens of smallest noise in each row of `noise` `[B, N]`."""
    hidden = torch.argsort(noise, dim=1)[:, :num_masked]
    mask = torch.zeros(noise.shape, dtype=torch.bool, device=noise.device)
    return mask.scatter_(1, hidden, True)


def block_mask(
    batch_size: int,
    grid: Sequence[int],
    ratio: float,
    generator: torch.Generator,
    min_block: int = 1,
    max_block: int | None = None,
) -> Tensor:
    """Blockwise bool mask `[B, prod(grid)]`: spans on 1-D grids, rectangles on 2-D, cuboids on 3-D.

    BEiT's blockwise masking generalised to any rank. Random boxes are added until the row hides
    `mask_count(N, ratio)` cells; hiding whole regions removes the shortcut of interpolating a
    hidden token from its visible neighbours. Each box:

    - covers about `volume` cells, `volume` uniform in `[min_block, max_block]` and capped by what
      is still missing (`max_block` defaults to the whole target count, as in BEiT);
    - has sides whose pairwise ratios lie in `[0.3, 1 / 0.3]` (BEiT's aspect range), clipped to
      the grid;
    - contains a randomly chosen still-visible cell, so every box hides at least one new cell and
      the loop ends after at most `mask_count` boxes.

    If the last box overshoots, its newly hidden cells are unhidden from the end in row-major
    order: the count becomes exact and what is left of the box is a prefix of it, not a box
    with random holes.
    """
    grid = tuple(grid)
    num_tokens = math.prod(grid)
    target = mask_count(num_tokens, ratio)
    if min_block < 1 or (max_block is not None and max_block < min_block):
        raise ValueError(
            f"need 1 <= min_block <= max_block, got min_block={min_block}, max_block={max_block}"
        )
    max_block = target if max_block is None else max_block
    rows = [
        _block_mask_row(grid, target, min_block, max_block, generator) for _ in range(batch_size)
    ]
    if not rows:
        return torch.zeros(0, num_tokens, dtype=torch.bool)
    return torch.stack(rows)


def _block_mask_row(
    grid: tuple[int, ...],
    target: int,
    min_block: int,
    max_block: int,
    generator: torch.Generator,
) -> Tensor:
    """One row of `block_mask`: a flat `[prod(grid)]` bool mask with exactly `target` cells set.

    The box loop runs on NumPy with a NumPy generator seeded by one draw from `generator`: the
    mask still depends only on `generator`, and each box costs microseconds rather than the tens
    a torch call on a small tensor takes, which matters when masks are drawn row by row.
    """
    seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
    rng = np.random.default_rng(seed)
    rank = len(grid)
    # Log side factors uniform in +-spread/2, centred to sum 0 so the box keeps its volume: the
    # ratio of any two sides is then within [0.3, 1 / 0.3].
    spread = math.log(1 / _MIN_ASPECT)
    mask = np.zeros(grid, dtype=bool)
    count = 0
    while count < target:
        high = min(max_block, target - count)
        low = min(min_block, high)
        volume = rng.uniform(low, high)
        logs = rng.uniform(-spread / 2, spread / 2, size=rank)
        scales = np.exp(logs - logs.mean())
        sides = [
            min(side, max(1, round(volume ** (1 / rank) * scale)))
            for side, scale in zip(grid, scales)
        ]
        visible = np.flatnonzero(~mask)
        anchor = np.unravel_index(visible[rng.integers(len(visible))], grid)
        # Where the box starts on each axis, among the placements that contain the anchor.
        starts = [
            rng.integers(max(0, cell - size + 1), min(cell, side - size) + 1)
            for cell, side, size in zip(anchor, grid, sides)
        ]
        region = tuple(slice(start, start + size) for start, size in zip(starts, sides))
        added = np.zeros(grid, dtype=bool)
        added[region] = ~mask[region]
        mask[region] = True
        count += int(added.sum())
    flat = mask.reshape(-1)
    if count > target:
        # `added` holds the last box's new cells; drop their row-major tail.
        flat[np.flatnonzero(added)[target - count :]] = False
    return torch.from_numpy(flat)


def tube_mask(
    batch_size: int, grid: Sequence[int], ratio: float, generator: torch.Generator
) -> Tensor:
    """VideoMAE tube mask `[B, T * prod(spatial)]` for a grid `(T, *spatial)`.

    One random spatial mask (exactly `mask_count(prod(spatial), ratio)` cells) is repeated at
    every time step: with a fresh mask per frame, a hidden patch could be copied from the same
    place in a neighbouring frame, which video's temporal redundancy makes nearly free. The
    count per row is therefore `T * mask_count(prod(spatial), ratio)`.
    """
    if len(grid) < 2:
        raise ValueError(f"tube masks need a grid (T, *spatial), got {tuple(grid)}")
    frames = grid[0]
    spatial = math.prod(grid[1:])
    frame_mask = random_mask(batch_size, spatial, ratio, generator)
    return frame_mask.unsqueeze(1).expand(batch_size, frames, spatial).reshape(batch_size, -1)


def upsample_mask(mask: Tensor, factors: Sequence[int]) -> Tensor:
    """Nearest upsampling `[B, *coarse_grid]` -> `[B, *(coarse_grid * factors)]`.

    Hierarchical CNN encoders (SparK, MambaMIM) draw the mask on the coarsest grid and need it at
    every finer stage: a fine cell is hidden exactly when the coarse cell it lies in is.
    """
    if mask.dim() != len(factors) + 1:
        raise ValueError(
            f"mask {tuple(mask.shape)} has {mask.dim() - 1} grid dims but {len(factors)} "
            f"factors were given"
        )
    for axis, factor in enumerate(factors):
        mask = mask.repeat_interleave(factor, dim=axis + 1)
    return mask


def upsample_mask_flat(mask: Tensor, coarse_grid: Sequence[int], factors: Sequence[int]) -> Tensor:
    """`upsample_mask` on flat masks: `[B, prod(coarse_grid)]` -> `[B, prod(fine_grid)]`."""
    batch = mask.shape[0]
    return upsample_mask(mask.reshape(batch, *coarse_grid), factors).reshape(batch, -1)


@dataclass
class RatioSchedule:
    """Mask ratio as a function of training progress in `[0, 1]`: constant, linear or cosine.

    Cosine moves slowly at both ends (half a cosine from `start` to `end`). Progress outside
    `[0, 1]` is clamped: a resumed run given more steps may report slightly more than 1.
    """

    start: float
    end: float
    kind: Literal["constant", "linear", "cosine"] = "linear"

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"RatioSchedule.{name} must be in [0, 1], got {value}")
        if self.kind not in ("constant", "linear", "cosine"):
            raise ValueError(
                f"RatioSchedule.kind must be 'constant', 'linear' or 'cosine', got {self.kind!r}"
            )
        if self.kind == "constant" and self.end != self.start:
            raise ValueError(
                f"a constant schedule needs start == end, got {self.start}, {self.end}"
            )

    def __call__(self, progress: float) -> float:
        progress = min(max(progress, 0.0), 1.0)
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            weight = progress
        else:
            weight = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.start + (self.end - self.start) * weight


class RatioMasker(nn.Module):
    """A masker with a fixed or scheduled ratio; subclasses implement `forward(tokens, generator)`.

    An `nn.Module` without parameters, so a `MaskedModel` registers it as a submodule and it shows
    in the model's repr. The engine calls `set_progress` every step; progress is not part of the
    state dict because the engine sets it again from the step count on resume.
    """

    def __init__(self, ratio: float | RatioSchedule) -> None:
        super().__init__()
        # Fail at construction, from the config, rather than at the first training step.
        if not isinstance(ratio, RatioSchedule) and not 0.0 <= ratio <= 1.0:
            raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
        self.ratio = ratio
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = float(progress)

    @property
    def current_ratio(self) -> float:
        if isinstance(self.ratio, RatioSchedule):
            return self.ratio(self.progress)
        return float(self.ratio)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        raise NotImplementedError


class RandomMasker(RatioMasker):
    """MAE's uniformly random mask: `random_mask` over the N tokens, any layout (grid or not)."""

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        return random_mask(tokens.batch_size, tokens.num_tokens, self.current_ratio, generator)

    def mask_from_seeds(self, tokens: Tokens, seeds: Tensor) -> Tensor:
        """The same distribution with row b drawn from `seeds[b]` alone, vectorised over the
        batch (`MaskedModel.draw_mask` uses it for per-sample masks)."""
        count = mask_count(tokens.num_tokens, self.current_ratio)
        return mask_from_noise(sample_uniform(seeds, tokens.num_tokens), count)


class BlockMasker(RatioMasker):
    """BEiT-style blockwise mask on `tokens.grid` of any rank (see `block_mask`)."""

    def __init__(
        self, ratio: float | RatioSchedule, min_block: int = 1, max_block: int | None = None
    ) -> None:
        super().__init__(ratio)
        self.min_block = min_block
        self.max_block = max_block

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, min_block={self.min_block}, max_block={self.max_block}"

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        grid = _checked_grid(tokens, "BlockMasker")
        return block_mask(
            tokens.batch_size, grid, self.current_ratio, generator, self.min_block, self.max_block
        )


class TubeMasker(RatioMasker):
    """VideoMAE's tube mask on a `(T, *spatial)` grid (see `tube_mask`)."""

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        grid = _checked_grid(tokens, "TubeMasker")
        return tube_mask(tokens.batch_size, grid, self.current_ratio, generator)

    def mask_from_seeds(self, tokens: Tokens, seeds: Tensor) -> Tensor:
        """Per-sample tube masks from `seeds` `[B]`, vectorised (see `RandomMasker`)."""
        frames, *spatial_grid = _checked_grid(tokens, "TubeMasker")
        spatial = math.prod(spatial_grid)
        count = mask_count(spatial, self.current_ratio)
        frame_mask = mask_from_noise(sample_uniform(seeds, spatial), count)
        return frame_mask.unsqueeze(1).expand(-1, frames, spatial).reshape(len(seeds), -1)


def _checked_grid(tokens: Tokens, masker: str) -> tuple[int, ...]:
    """`tokens.grid`, after checking that it exists and flattens to the N tokens."""
    if tokens.grid is None:
        raise ValueError(f"{masker} needs tokens on a regular grid, but tokens.grid is None")
    if math.prod(tokens.grid) != tokens.num_tokens:
        raise ValueError(
            f"{masker}: tokens.grid {tokens.grid} has {math.prod(tokens.grid)} cells but there "
            f"are {tokens.num_tokens} tokens"
        )
    return tuple(tokens.grid)
