"""Masked autoencoder for multichannel series (PatchTST / Ti-MAE style), read top to bottom:

    series [B, C, T] --SeriesPatchTokenizer--> patches [B, N, patch * C]
        --RandomMasker--> mask [B, N]
        --SeriesEncoder (visible patches only)--> latent [B, K, D]
        --SeriesDecoder (mask tokens at hidden positions)--> prediction [B, N, patch * C]
    PatchTarget: (per-patch normalised) patches; MSE on the hidden patches only.

Patches span all channels at once (channel-mixing tokens, as in Ti-MAE), so the encoder sees
cross-channel structure. Every tensor helper comes from the core (patching, gathering, masking).
"""

from __future__ import annotations

import torch
from omnimask import Decoder, Encoder, Target, Tokens
from omnimask.gather import gather_tokens, mask_to_indices, scatter_tokens
from omnimask.patching import grid_positions, patch_grid, patchify, per_patch_normalize
from torch import Tensor, nn


def sincos_embedding(positions: Tensor, dim: int) -> Tensor:
    """Fixed 1-D sine/cosine embedding: positions `[...]` -> `[..., dim]` (`dim` even)."""
    half = dim // 2
    frequencies = 10000.0 ** (-torch.arange(half, device=positions.device) / half)
    angles = positions.float().unsqueeze(-1) * frequencies
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class SeriesPatchTokenizer(nn.Module):
    """`batch["series"]` `[B, C, T]` -> `Tokens` of non-overlapping patches `[B, T/p, p * C]`.

    With `instance_norm` each channel of each series is first scaled to zero mean and unit
    variance over time (RevIN-style, as in PatchTST), so sensors in different units train
    together; the statistics travel in `tokens.extras` to put reconstructions back in units.
    """

    def __init__(self, patch: int, instance_norm: bool = True, eps: float = 1e-5) -> None:
        super().__init__()
        self.patch, self.instance_norm, self.eps = patch, instance_norm, eps

    def forward(self, batch: dict) -> Tokens:
        series = batch["series"].float()
        extras = {}
        if self.instance_norm:
            mean = series.mean(-1, keepdim=True)
            std = (series.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
            series = (series - mean) / std
            extras = {"series_mean": mean, "series_std": std}
        grid = patch_grid(series.shape[2:], (self.patch,))
        positions = grid_positions(grid, series.device).expand(series.shape[0], -1, -1)
        return Tokens(
            values=patchify(series, (self.patch,)), positions=positions, grid=grid, extras=extras
        )


def transformer_blocks(dim: int, depth: int, heads: int, mlp_ratio: float, dropout: float):
    """`depth` pre-norm Transformer blocks (GELU MLP), batch first."""
    return nn.ModuleList(
        nn.TransformerEncoderLayer(
            dim,
            heads,
            int(dim * mlp_ratio),
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        for _ in range(depth)
    )


class SeriesEncoder(Encoder):
    """Patch embedding + fixed position embedding + Transformer, on the visible patches only."""

    def __init__(
        self,
        patch_dim: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"encoder dim must be even (sin/cos embedding), got {dim}")
        self.dim = dim
        self.embed = nn.Linear(patch_dim, dim)
        self.blocks = transformer_blocks(dim, depth, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(dim)

    def embed_tokens(self, tokens: Tokens) -> Tensor:
        return self.embed(tokens.values) + sincos_embedding(tokens.positions[..., 0], self.dim)

    def encode(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        """Latent `[B, K, D]` of the K visible patches; hidden patches are never computed."""
        visible_index, _ = mask_to_indices(mask)
        return self.encode(gather_tokens(self.embed_tokens(tokens), visible_index))

    def forward_features(self, tokens: Tokens) -> Tensor:
        """Latent `[B, N, D]` of every patch (probe, export); `pool` averages it."""
        return self.encode(self.embed_tokens(tokens))


class SeriesDecoder(Decoder):
    """A narrow Transformer over all N positions: visible latents, a learned mask token at the
    hidden ones, and a linear head back to patch values."""

    def __init__(
        self,
        encoder_dim: int,
        patch_dim: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"decoder dim must be even (sin/cos embedding), got {dim}")
        self.dim = dim
        self.project = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.blocks = transformer_blocks(dim, depth, heads, mlp_ratio, 0.0)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, patch_dim)

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        visible_index, _ = mask_to_indices(mask)
        x = scatter_tokens(self.project(latent), visible_index, tokens.num_tokens, self.mask_token)
        x = x + sincos_embedding(tokens.positions[..., 0], self.dim)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class PatchTarget(Target):
    """Predict each patch's values (per-patch normalised when `normalize`, MAE's norm_pix);
    the loss is the MSE over hidden patches only. `mse_visible` is logged, not optimised."""

    def __init__(self, normalize: bool = True) -> None:
        super().__init__()
        self.normalize = normalize

    def forward(self, batch: dict, tokens: Tokens) -> Tensor:
        return per_patch_normalize(tokens.values) if self.normalize else tokens.values

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        per_patch = (prediction.float() - target.float()).pow(2).mean(-1)
        hidden = mask.to(per_patch.dtype)
        losses = {"loss": (per_patch * hidden).sum() / hidden.sum().clamp_min(1.0)}
        with torch.no_grad():
            visible = 1.0 - hidden
            losses["mse_visible"] = (per_patch * visible).sum() / visible.sum().clamp_min(1.0)
        return losses


class SeriesEmbedder(nn.Module):
    """`series [B, C, T] -> [B, D]`: what `MaskedModel.embed` computes, as a plain module with a
    tensor in and a tensor out, so it can be exported with `torch.export`."""

    def __init__(self, tokenizer: SeriesPatchTokenizer, encoder: SeriesEncoder) -> None:
        super().__init__()
        self.tokenizer, self.encoder = tokenizer, encoder

    def forward(self, series: Tensor) -> Tensor:
        tokens = self.tokenizer({"series": series})
        return self.encoder.pool(self.encoder.forward_features(tokens), tokens)
