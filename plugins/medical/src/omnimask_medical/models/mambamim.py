"""MambaMIM's decoder and target (Tang et al., 2024), on top of `HybridEncoder` and TOKI.

The decoder "densifies" each encoder map coarse to fine, as SparK does: masked sites of the
deepest (Mamba) map are filled by TOKI, those of the finer maps by a learned per-scale mask
embedding; a per-scale projection (1^3 on the deepest, 3^3 on the others) brings each map to the
decoder's width, which halves at every x2 upsampling (transposed convolution + two 3^3
conv-norm-GELU). A 1^3 head predicts the volume, returned as the coarse grid's patches.

The target is the input volume normalised per coarse cell (MAE's `norm_pix_loss`); the loss is
the mean squared error over the masked cells only.
"""

from __future__ import annotations

import torch
from omnimask import Decoder, Target, Tokens
from omnimask.model import Batch
from omnimask.patching import grid_positions, patch_grid, patchify, per_patch_normalize
from torch import Tensor, nn

from omnimask_medical.models.encoder import ChannelsFirstLayerNorm
from omnimask_medical.models.toki import TokenInterpolation


class VolumeTokenizer(nn.Module):
    """`batch["volume"]` `[B, 1, S, S, S]` -> tokens of `cell`^3 voxels on the coarse grid; the
    encoder reads the volume itself from `extras["volume"]`."""

    def __init__(self, cell: int) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, batch: Batch) -> Tokens:
        volume = batch["volume"]
        cell = (self.cell,) * 3
        grid = patch_grid(volume.shape[2:], cell)
        positions = grid_positions(grid, volume.device).expand(volume.shape[0], -1, -1)
        return Tokens(patchify(volume, cell), positions, grid, extras={"volume": volume})

    def extra_repr(self) -> str:
        return f"cell={self.cell}"


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose3d(in_channels, in_channels, 2, stride=2)
        self.convs = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, padding=1),
            ChannelsFirstLayerNorm(out_channels),
            nn.GELU(),
            nn.Conv3d(out_channels, out_channels, 3, padding=1),
            ChannelsFirstLayerNorm(out_channels),
            nn.GELU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(self.upsample(x))


class DensifyingDecoder(Decoder):
    """Encoder maps (finest first, strides 1..cell) -> `[B, N, cell^3]` voxel predictions."""

    def __init__(self, encoder_widths: tuple[int, ...], width: int, cell: int) -> None:
        super().__init__()
        coarse_to_fine = list(reversed(encoder_widths))
        widths = [max(width // 2**k, 8) for k in range(len(coarse_to_fine))]
        self.cell = cell
        self.toki = TokenInterpolation(coarse_to_fine[0])
        self.mask_embeddings = nn.ParameterList(
            [nn.Parameter(torch.randn(c) * 0.02) for c in coarse_to_fine[1:]]
        )
        self.projections = nn.ModuleList(
            [
                nn.Conv3d(c, widths[k], 1 if k == 0 else 3, padding=0 if k == 0 else 1)
                for k, c in enumerate(coarse_to_fine)
            ]
        )
        self.blocks = nn.ModuleList(
            [UpBlock(widths[k], widths[k + 1]) for k in range(len(widths) - 1)]
        )
        self.head = nn.Conv3d(widths[-1], 1, 1)

    def forward(self, latent: list[Tensor], tokens: Tokens, mask: Tensor) -> Tensor:
        maps = list(reversed(latent))
        deepest = maps[0]
        batch, channels, *grid = deepest.shape
        sequence = self.toki(deepest.flatten(2).transpose(1, 2), mask)
        x = self.projections[0](sequence.transpose(1, 2).reshape(batch, channels, *grid))
        coarse_visible = (~mask).view(batch, 1, *grid)
        for k, feature in enumerate(maps[1:], start=1):
            factor = feature.shape[-1] // grid[-1]
            visible = coarse_visible
            for axis in (2, 3, 4):
                visible = visible.repeat_interleave(factor, dim=axis)
            filled = torch.where(visible, feature, self.mask_embeddings[k - 1].view(1, -1, 1, 1, 1))
            x = self.blocks[k - 1](x) + self.projections[k](filled)
        return patchify(self.head(x), (self.cell,) * 3)


class NormalizedVoxels(Target):
    """Voxels normalised per coarse cell; mean squared error on masked cells only."""

    def forward(self, batch: Batch, tokens: Tokens) -> Tensor:
        return per_patch_normalize(tokens.values)

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        per_cell = (prediction - target).pow(2).mean(-1)
        weights = mask.to(per_cell.dtype)
        return {"loss": (per_cell * weights).sum() / weights.sum().clamp_min(1.0)}
