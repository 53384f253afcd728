"""Point-MAE (Pang et al., ECCV 2022): random masking of point patches, an encoder on the
visible patches only, a decoder with mask tokens, and a linear head that predicts each masked
patch's points, scored by the L2 Chamfer distance."""

from __future__ import annotations

import torch
from omnimask import Decoder, Encoder, Target, Tokens
from omnimask.gather import gather_tokens, mask_to_indices
from torch import Tensor, nn

from omnimask_pointcloud.geometry import chamfer_distance
from omnimask_pointcloud.layers import MiniPointNet, PositionalTransformer, position_mlp


def max_mean_pool(features: Tensor) -> Tensor:
    """`[B, G, D]` -> `[B, 2D]`: max and mean over patches, the global feature both papers
    classify from."""
    return torch.cat([features.max(1).values, features.mean(1)], dim=-1)


class PointMAEEncoder(Encoder):
    """Mini-PointNet patch embeddings + centre positions -> Transformer over visible patches."""

    def __init__(
        self, dim: int, depth: int, heads: int, pointnet_width: int, drop_path: float
    ) -> None:
        super().__init__()
        self.patch_embed = MiniPointNet(dim, pointnet_width)
        self.position = position_mlp(dim)
        self.transformer = PositionalTransformer(dim, depth, heads, drop_path)

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        """Latent `[B, V, D]` of the visible patches, in ascending patch order."""
        embedded = self.patch_embed(tokens.extras["neighbourhood"])
        visible, _ = mask_to_indices(mask)
        return self.transformer(
            gather_tokens(embedded, visible),
            self.position(gather_tokens(tokens.positions, visible)),
        )

    def forward_features(self, tokens: Tokens) -> Tensor:
        embedded = self.patch_embed(tokens.extras["neighbourhood"])
        return self.transformer(embedded, self.position(tokens.positions))

    def pool(self, features: Tensor, tokens: Tokens) -> Tensor:
        return max_mean_pool(features)


class PointMAEDecoder(Decoder):
    """Visible latents + a shared mask token at every masked centre -> Transformer -> a linear
    head giving the `group_size` points of each masked patch `[B, M, k, 3]`."""

    def __init__(self, dim: int, depth: int, heads: int, group_size: int) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.position = position_mlp(dim)
        self.transformer = PositionalTransformer(dim, depth, heads)
        self.head = nn.Linear(dim, 3 * group_size)
        self.group_size = group_size

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        visible, masked = mask_to_indices(mask)
        batch, hidden = masked.shape
        queries = self.mask_token.expand(batch, hidden, -1)
        x = torch.cat([latent, queries], dim=1)
        positions = self.position(
            torch.cat(
                [gather_tokens(tokens.positions, visible), gather_tokens(tokens.positions, masked)],
                1,
            )
        )
        x = self.transformer(x, positions)[:, -hidden:]
        return self.head(x).reshape(batch, hidden, self.group_size, 3)


class PatchChamferTarget(Target):
    """Target: every patch's points relative to its centre; loss: Chamfer distance between each
    masked patch and its prediction, averaged over masked patches."""

    def __init__(self, variant: str = "l2") -> None:
        super().__init__()
        self.variant = variant

    def forward(self, batch: dict, tokens: Tokens) -> Tensor:
        return tokens.extras["neighbourhood"]

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        _, masked = mask_to_indices(mask)
        truth = gather_tokens(target, masked)
        k = truth.shape[-2]
        distance = chamfer_distance(
            prediction.reshape(-1, k, 3), truth.reshape(-1, k, 3), self.variant
        )
        return {"loss": distance, f"chamfer_{self.variant}": distance.detach()}
