"""The hybrid encoder: masked-dense 3D MedNeXt stages, then bidirectional Mamba over tokens.

Masked-dense encoding (SparK's trick, here in 3D): the network runs dense convolutions on the
whole volume but multiplies every spatial operation's output by the visible-site mask at its
resolution, so masked sites stay exactly zero and a visible site's features are those a sparse
convolution over visible sites only would give. Convolution biases cannot seep out of masked
sites either. Norms are per voxel (channels-first LayerNorm), so no statistic mixes sites. The
mask lives on the coarsest grid (one cell = `2 ** len(widths)` voxels a side), so every pooling
window falls inside a single cell: max pooling never mixes visible and masked voxels.

At the coarsest grid the features become a token sequence (raster order) with a fixed 3D
sin-cos position embedding; the Mamba layers run on the visible tokens only (as MambaMIM's
encoder does) and their output is put back on the grid with zeros at masked sites.
"""

from __future__ import annotations

import torch
from omnimask import Encoder, Tokens
from omnimask.gather import gather_tokens, mask_to_indices
from omnimask.masking import upsample_mask
from torch import Tensor, nn

from omnimask_medical.ssm.mixer import MambaMixer


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over channels at every voxel of `[B, C, D, H, W]` (per-site statistics)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class MedNeXtBlock(nn.Module):
    """Depthwise k^3 conv -> LayerNorm -> 1x1x1 expansion -> GELU -> 1x1x1 projection, residual
    (MedNeXt, Roy et al. 2023), its output re-masked."""

    def __init__(self, channels: int, kernel: int = 3, expansion: int = 4) -> None:
        super().__init__()
        self.depthwise = nn.Conv3d(channels, channels, kernel, padding=kernel // 2, groups=channels)
        self.norm = ChannelsFirstLayerNorm(channels)
        self.expand = nn.Conv3d(channels, expansion * channels, 1)
        self.act = nn.GELU()
        self.project = nn.Conv3d(expansion * channels, channels, 1)

    def forward(self, x: Tensor, visible: Tensor) -> Tensor:
        y = self.project(self.act(self.expand(self.norm(self.depthwise(x)))))
        return x + y * visible


class ConvStage(nn.Module):
    """x2 max pooling, a 3^3 convolution to the stage's width, then MedNeXt blocks."""

    def __init__(self, in_channels: int, channels: int, depth: int, kernel: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool3d(2)
        self.widen = nn.Conv3d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList([MedNeXtBlock(channels, kernel) for _ in range(depth)])

    def forward(self, x: Tensor, visible: Tensor) -> Tensor:
        x = self.widen(self.pool(x)) * visible
        for block in self.blocks:
            x = block(x, visible)
        return x


class MambaLayer(nn.Module):
    """Pre-norm bidirectional Mamba mixer and MLP, both residual (MambaMIM's `MambaLayer`)."""

    def __init__(self, dim: int, d_state: int = 16) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = MambaMixer(dim, d_state=d_state, bidirectional=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_position_embedding_3d(grid: tuple[int, int, int], dim: int) -> Tensor:
    """Fixed `[N, dim]` embedding: sin/cos of each of the three coordinates at dim/6 frequencies
    (MAE's 2D sin-cos embedding extended to 3D, as MambaMIM does)."""
    if dim % 6:
        raise ValueError(
            f"the Mamba width ({dim}) must be a multiple of 6 for 3D sin-cos positions"
        )
    coords = torch.stack(
        torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in grid], indexing="ij"), -1
    ).reshape(-1, 3)
    omega = 1.0 / 10000 ** (torch.arange(dim // 6, dtype=torch.float32) / (dim // 6))
    angles = coords[:, :, None] * omega  # [N, 3, dim/6]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1).reshape(len(coords), dim)


class HybridEncoder(Encoder):
    """`tokens.extras["volume"]` `[B, 1, S, S, S]` and a coarse-grid mask -> feature maps at
    strides 1, 2, ..., 2**len(widths) (finest first), masked sites zero; the last one is the
    Mamba stage's output."""

    def __init__(
        self, stem_width: int, widths: tuple[int, ...], depths: tuple[int, ...], kernel: int,
        mamba_depth: int, d_state: int = 16,
    ) -> None:  # fmt: skip
        super().__init__()
        if len(widths) != len(depths):
            raise ValueError(f"model.widths {widths} and model.depths {depths} differ in length")
        self.stem = nn.Conv3d(1, stem_width, 3, padding=1)
        ins = (stem_width, *widths[:-1])
        self.stages = nn.ModuleList(
            [ConvStage(i, w, d, kernel) for i, w, d in zip(ins, widths, depths)]
        )
        self.layers = nn.ModuleList([MambaLayer(widths[-1], d_state) for _ in range(mamba_depth)])
        self.final_norm = nn.LayerNorm(widths[-1])
        self.widths = (stem_width, *widths)
        self.cell = 2 ** len(widths)
        self._positions: dict[tuple[int, ...], Tensor] = {}

    def visible_maps(self, mask: Tensor, grid: tuple[int, ...]) -> list[Tensor]:
        """Float visible-site masks `[B, 1, ...]` at every stage, finest first: the coarse mask
        repeated to each resolution (the bottom-up hybrid mask)."""
        coarse = (~mask).view(mask.shape[0], 1, *grid)
        maps = []
        for level in range(len(self.stages) + 1):
            factor = self.cell // 2**level
            maps.append(upsample_mask(coarse.squeeze(1), (factor,) * 3).unsqueeze(1).float())
        return maps

    def forward(self, tokens: Tokens, mask: Tensor) -> list[Tensor]:
        visible = self.visible_maps(mask, tokens.grid)
        x = self.stem(tokens.extras["volume"] * visible[0]) * visible[0]
        features = [x]
        for stage, here in zip(self.stages, visible[1:]):
            x = stage(x, here)
            features.append(x)
        features[-1] = self._mamba(features[-1], mask)
        return features

    def forward_features(self, tokens: Tokens) -> list[Tensor]:
        nothing = torch.zeros(tokens.batch_size, tokens.num_tokens, dtype=torch.bool)
        return self.forward(tokens, nothing.to(tokens.device))

    def pool(self, features: list[Tensor], tokens: Tokens) -> Tensor:
        return features[-1].mean(dim=(2, 3, 4))

    def _mamba(self, x: Tensor, mask: Tensor) -> Tensor:
        batch, channels, *grid = x.shape
        sequence = x.flatten(2).transpose(1, 2) + self._position(tuple(grid), x)
        keep, _ = mask_to_indices(mask)
        visible = gather_tokens(sequence, keep)
        for layer in self.layers:
            visible = layer(visible)
        visible = self.final_norm(visible)
        out = torch.zeros_like(sequence).scatter(1, keep.unsqueeze(-1).expand_as(visible), visible)
        return out.transpose(1, 2).reshape(batch, channels, *grid)

    def _position(self, grid: tuple[int, ...], like: Tensor) -> Tensor:
        if grid not in self._positions:
            self._positions[grid] = sincos_position_embedding_3d(grid, like.shape[1])
        return self._positions[grid].to(like.device, like.dtype)
