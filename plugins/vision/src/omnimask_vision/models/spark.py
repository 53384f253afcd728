"""SparK (Tian et al., ICLR 2023): sparse masked modelling on an unmodified timm CNN.

The encoder (`omnimask_vision.sparse.SparseCNNEncoder`) sees only the visible 32x32 patches and
returns feature maps at strides 4, 8, 16 and 32 with the masked sites empty. The decoder
"densifies" each map (visible-only batch norm, a learnable per-scale mask embedding at the empty
sites, a per-scale projection) and decodes coarse to fine, UNet-like, to a 3-channel image. The
target is the image normalised per 32x32 patch; L2 on masked patches only.
"""

from __future__ import annotations

import torch
from omnimask import Decoder, Target, Tokens
from omnimask.model import Batch
from omnimask.patching import patchify, per_patch_normalize
from torch import Tensor, nn

from omnimask_vision.sparse import masked_batch_norm


class UpsamplingBlock(nn.Module):
    """x2 transposed-conv upsampling, then two 3x3 conv-BN-ReLU6 (SparK's decoder block)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, 4, stride=2, padding=1)
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU6(inplace=True),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(self.upsample(x))


class DensifyingDecoder(Decoder):
    """Encoder maps (fine to coarse, strides 4..32) -> patchified image prediction `[B, N, D]`.

    Decoder widths halve at every upsampling: `width, width/2, ..., width/32` from stride 32 down
    to stride 1; the stride-16, 8 and 4 maps are added after the block that reaches their scale.
    """

    def __init__(self, encoder_widths: list[int], width: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        coarse_to_fine = list(reversed(encoder_widths))
        widths = [width // 2**k for k in range(6)]
        if widths[-1] < 1:
            raise ValueError(f"decoder width {width} is too small for 5 halvings (needs >= 32)")
        self.mask_embeddings = nn.ParameterList(
            [nn.Parameter(torch.zeros(c)) for c in coarse_to_fine]
        )
        for embedding in self.mask_embeddings:
            nn.init.trunc_normal_(embedding, std=0.02)
        self.norms = nn.ModuleList([nn.BatchNorm2d(c) for c in coarse_to_fine])
        # SparK's projections: 1x1 on the coarsest map, 3x3 on the finer ones.
        self.projections = nn.ModuleList(
            [
                nn.Conv2d(c, widths[k], 1 if k == 0 else 3, padding=0 if k == 0 else 1)
                for k, c in enumerate(coarse_to_fine)
            ]
        )
        self.blocks = nn.ModuleList([UpsamplingBlock(widths[k], widths[k + 1]) for k in range(5)])
        self.head = nn.Conv2d(widths[-1], 3, 1)

    def forward(self, latent: list[Tensor], tokens: Tokens, mask: Tensor) -> Tensor:
        visible = (~mask).view(mask.shape[0], 1, *tokens.grid)
        x: Tensor | None = None
        for k, feature in enumerate(reversed(latent)):
            factor = feature.shape[-1] // visible.shape[-1]
            here = visible.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
            dense = masked_batch_norm(self.norms[k], feature, here)
            dense = torch.where(here, dense, self.mask_embeddings[k].view(1, -1, 1, 1))
            dense = self.projections[k](dense)
            x = dense if x is None else x + dense
            x = self.blocks[k](x)
        for block in self.blocks[len(latent) :]:
            x = block(x)
        return patchify(self.head(x), (self.patch, self.patch))


class PatchNormalizedPixels(Target):
    """Pixels normalised per patch (MAE's `norm_pix_loss`); mean squared error on masked patches.

    `per_patch=False` predicts the raw (ImageNet-normalised) pixels instead.
    """

    def __init__(self, per_patch: bool = True) -> None:
        super().__init__()
        self.per_patch = per_patch

    def forward(self, batch: Batch, tokens: Tokens) -> Tensor:
        return per_patch_normalize(tokens.values) if self.per_patch else tokens.values

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        per_patch = (prediction - target).pow(2).mean(-1)
        weights = mask.to(per_patch.dtype)
        return {"loss": (per_patch * weights).sum() / weights.sum().clamp_min(1.0)}
