"""Point-BERT's block masking: a contiguous neighbourhood of patches is hidden. Point groups have
no grid, so the core's grid `block_mask` does not apply; the block is the nearest patches (by
centre distance) of a random centre patch."""

from __future__ import annotations

import torch
from omnimask import Tokens
from torch import Tensor, nn


class PointBlockMasker(nn.Module):
    """Hide, per sample, the `r * G` patches nearest a random patch, `r ~ U[min_ratio, max_ratio]`.

    All randomness comes from `generator`; at least one patch is hidden and one kept.
    """

    def __init__(self, min_ratio: float = 0.25, max_ratio: float = 0.45) -> None:
        super().__init__()
        if not 0 < min_ratio <= max_ratio < 1:
            raise ValueError(f"need 0 < min_ratio <= max_ratio < 1, got {min_ratio}, {max_ratio}")
        self.min_ratio, self.max_ratio = min_ratio, max_ratio

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        centres = tokens.positions.detach().float().cpu()  # [B, G, 3]
        batch, groups = centres.shape[:2]
        ratio = self.min_ratio + (self.max_ratio - self.min_ratio) * torch.rand(
            batch, generator=generator
        )
        hidden = (ratio * groups).round().long().clamp(1, groups - 1)  # [B]
        seed = torch.randint(groups, (batch,), generator=generator)
        seed_centre = centres[torch.arange(batch), seed].unsqueeze(1)
        distance = (centres - seed_centre).square().sum(-1)  # [B, G]
        rank = torch.argsort(torch.argsort(distance, dim=1, stable=True), dim=1, stable=True)
        return rank < hidden.unsqueeze(1)
