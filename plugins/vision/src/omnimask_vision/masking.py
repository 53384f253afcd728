"""Image maskers beyond MAE's uniform one: SimMIM's coarse random cells and ColorMAE's filtered
noise (HPM's loss-guided masks live with their model, `models/hpm.py`)."""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from omnimask import Tokens
from omnimask.masking import (
    RatioMasker,
    mask_count,
    mask_from_noise,
    random_mask,
    upsample_mask_flat,
)
from omnimask.seeding import sample_uniform
from torch import Tensor


class CoarseRandomMasker(RatioMasker):
    """Hide random `cell x cell` blocks of tokens (SimMIM: 32x32-pixel cells over 16-pixel
    patches, so `cell = 2`). Every row hides the same count, `cell^2 * mask_count(cells, ratio)`.
    """

    def __init__(self, ratio: float, cell: int) -> None:
        super().__init__(ratio)
        self.cell = cell

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, cell={self.cell}"

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        if tokens.grid is None or any(side % self.cell for side in tokens.grid):
            raise ValueError(
                f"token grid {tokens.grid} is not divisible into {self.cell}x{self.cell} mask cells"
            )
        coarse = tuple(side // self.cell for side in tokens.grid)
        mask = random_mask(tokens.batch_size, coarse[0] * coarse[1], self.current_ratio, generator)
        return upsample_mask_flat(mask, coarse, (self.cell, self.cell))


#: ColorMAE's four filters of white noise W (Hinojosa et al., ECCV 2024), with G_s a Gaussian blur:
#: red = G_s W (low-pass), blue = W - G_s W (high-pass), green = G_s W - G_S W with s < S
#: (band-pass), purple = W - green (band-stop).
NOISE_COLORS = ("red", "blue", "green", "purple")


def gaussian_blur(field: Tensor, sigma: float) -> Tensor:
    """Blur `[B, H, W]` with a Gaussian of `sigma` cells, truncated at 3 sigma (torchvision's
    separable kernel, reflect padding)."""
    size = 2 * math.ceil(3 * sigma) + 1
    return TF.gaussian_blur(field.unsqueeze(1), [size, size], [sigma, sigma]).squeeze(1)


def color_noise(white: Tensor, color: str, sigma: float, outer_sigma: float) -> Tensor:
    """ColorMAE's filtered noise of `white` `[B, H, W]` (see `NOISE_COLORS`)."""
    if color == "red":
        return gaussian_blur(white, sigma)
    if color == "blue":
        return white - gaussian_blur(white, sigma)
    green = gaussian_blur(white, sigma) - gaussian_blur(white, outer_sigma)
    if color == "green":
        return green
    if color == "purple":
        return white - green
    raise ValueError(f"noise color must be one of {NOISE_COLORS}, got {color!r}")


class ColorNoiseMasker(RatioMasker):
    """ColorMAE's data-independent masks: filter white noise on the patch grid, keep the
    patches where the filtered noise is strongest visible and hide the rest (the lowest
    `mask_count(N, ratio)` values, so every row hides the same count).

    ColorMAE precomputes large noise images and crops a grid-sized window per sample; here each
    sample's noise is drawn on the grid plus a margin of 3 outer sigmas, filtered and cropped to
    the grid, which gives the same stationary field without border effects, costs a few small
    convolutions, and keeps every mask a function of its sample's seed (`mask_from_seeds`).
    """

    def __init__(
        self, ratio: float, color: str = "green", sigma: float = 1.0, outer_sigma: float = 2.0
    ) -> None:
        super().__init__(ratio)
        if color not in NOISE_COLORS:
            raise ValueError(f"noise color must be one of {NOISE_COLORS}, got {color!r}")
        if not 0 < sigma < outer_sigma:
            raise ValueError(f"need 0 < sigma < outer_sigma, got {sigma} and {outer_sigma}")
        self.color, self.sigma, self.outer_sigma = color, sigma, outer_sigma
        self.margin = math.ceil(3 * outer_sigma)

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}, color={self.color!r}, sigma={self.sigma}/{self.outer_sigma}"

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        field = self._field(tokens)
        uniform = torch.rand(tokens.batch_size, field[0] * field[1], generator=generator)
        return self._mask(uniform, tokens)

    def mask_from_seeds(self, tokens: Tokens, seeds: Tensor) -> Tensor:
        """Per-sample masks, row b from `seeds[b]` alone (see `RandomMasker.mask_from_seeds`)."""
        field = self._field(tokens)
        return self._mask(sample_uniform(seeds, field[0] * field[1]), tokens)

    def _field(self, tokens: Tokens) -> tuple[int, int]:
        """The noise field's sides: the 2-D token grid plus the margin on every side."""
        if tokens.grid is None or len(tokens.grid) != 2:
            raise ValueError(f"ColorNoiseMasker needs a 2-D token grid, got {tokens.grid}")
        return tuple(side + 2 * self.margin for side in tokens.grid)

    def _mask(self, uniform: Tensor, tokens: Tokens) -> Tensor:
        height, width = tokens.grid
        m = self.margin
        white = (uniform - 0.5).view(-1, height + 2 * m, width + 2 * m)
        noise = color_noise(white, self.color, self.sigma, self.outer_sigma)
        noise = noise[:, m : m + height, m : m + width].reshape(len(uniform), -1)
        return mask_from_noise(noise, mask_count(tokens.num_tokens, self.current_ratio))
