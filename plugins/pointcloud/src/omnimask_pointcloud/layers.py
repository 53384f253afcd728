"""Building blocks shared by Point-BERT and Point-MAE: the mini-PointNet patch embedding, the
centre position embedding, and a Transformer that re-adds positions before every block (as both
papers' code does)."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn


class MiniPointNet(nn.Module):
    """Patch points `[..., k, 3]` -> one vector `[..., out_dim]` (shared MLP, max-pool, concat
    the pooled feature back onto every point, MLP again, max-pool)."""

    def __init__(self, out_dim: int, width: int = 128) -> None:
        super().__init__()
        self.first = nn.Sequential(
            nn.Conv1d(3, width, 1),
            nn.BatchNorm1d(width),
            nn.ReLU(inplace=True),
            nn.Conv1d(width, 2 * width, 1),
        )
        self.second = nn.Sequential(
            nn.Conv1d(4 * width, 4 * width, 1),
            nn.BatchNorm1d(4 * width),
            nn.ReLU(inplace=True),
            nn.Conv1d(4 * width, out_dim, 1),
        )

    def forward(self, patches: Tensor) -> Tensor:
        leading, k = patches.shape[:-2], patches.shape[-2]
        x = self.first(patches.reshape(-1, k, 3).transpose(1, 2))  # [P, 2w, k]
        pooled = x.max(-1, keepdim=True).values
        x = self.second(torch.cat([pooled.expand_as(x), x], dim=1))  # [P, 4w, k]
        return x.max(-1).values.reshape(*leading, -1)


def position_mlp(dim: int, hidden: int = 128) -> nn.Sequential:
    """Centre xyz -> position embedding."""
    return nn.Sequential(nn.Linear(3, hidden), nn.GELU(), nn.Linear(hidden, dim))


class PositionalTransformer(nn.Module):
    """timm ViT blocks, positions added before each block, a final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, drop_path: float = 0.0) -> None:
        super().__init__()
        rates = [drop_path * i / max(1, depth - 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(dim, heads, qkv_bias=False, drop_path=r) for r in rates)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x + positions)
        return self.norm(x)
