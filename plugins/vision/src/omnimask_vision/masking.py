"""SimMIM's coarse random mask: random cells of a coarse grid, spread over the finer token grid."""

from __future__ import annotations

import torch
from omnimask import Tokens
from omnimask.masking import RatioMasker, random_mask, upsample_mask_flat
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
