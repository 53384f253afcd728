"""CROMA (Fuller et al., NeurIPS 2023): contrastive radar-optical masked autoencoders.

One step: both sensors are cut into patches on the same grid; one random spatial mask hides the
same patches of both; the optical encoder (depth L) and the radar encoder (depth L/2) see only
the visible patches; a symmetric InfoNCE aligns their pooled, projected encodings; the joint
encoder (depth L/2, radar tokens cross-attending to optical tokens) feeds a light decoder that
reconstructs the hidden patches of both sensors (MSE on per-patch normalised pixels). Positions
enter only through 2D-ALiBi (self-attention) and X-ALiBi (cross-attention) biases.

Nodata: a batch may carry `valid` (`[B, H, W]` bool, True where every band of both sensors holds
data). The tokenizer sets nodata pixels to 0 (the band mean after standardisation), so what lies
under nodata never reaches the model, and the reconstruction target and loss use valid pixels
only: a hidden patch's error is averaged over its valid pixels, a patch without any adds nothing.
Fully-nodata patches still enter the encoders as band-mean tokens and their pooled vectors (as
in torchgeo's CROMA, which pools every token): the contrastive loss is not masked for them. Both
sensors share one validity mask, so the two pooled vectors of a chip average the same places.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omnimask import Decoder, Encoder, MaskedModel, Target, Tokens
from omnimask.gather import gather_tokens, mask_to_indices, scatter_tokens
from omnimask.masking import RandomMasker
from omnimask.model import Batch, MaskedOutput
from omnimask.patching import grid_positions, patch_grid, patchify
from timm.layers import build_sincos2d_pos_embed
from torch import Tensor, nn

from omnimask_remote_sensing.models.alibi import alibi_2d, alibi_slopes
from omnimask_remote_sensing.models.contrastive import ContrastiveHead
from omnimask_remote_sensing.models.layers import (
    BaseTransformer,
    BaseTransformerCrossAttn,
    ViT,
    gap_ffn,
)

#: batch key -> sensor name used in tokens and features.
SENSOR_KEYS = {"s2": "optical", "s1": "radar"}
EMBEDDINGS = ("optical", "radar", "joint", "concat")


class CromaTokenizer(nn.Module):
    """Batch `{"s2": [B, C2, H, W], "s1": [B, C1, H, W][, "valid": [B, H, W]]}` -> patch tokens
    on one grid.

    Each present sensor's patches go to `tokens.extras["optical" | "radar"]`; `values` is their
    concatenation (what the token count and masks are defined on). Either sensor may be absent
    for unimodal use downstream. With `valid`, nodata pixels are set to 0 and its patches
    (`[B, N, p * p]` bool) go to `tokens.extras["valid"]`.
    """

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, batch: Batch) -> Tokens:
        images = {name: batch[key] for key, name in SENSOR_KEYS.items() if key in batch}
        if not images:
            raise ValueError("a CROMA batch needs 's2' (optical) and/or 's1' (radar) images")
        shapes = {name: tuple(x.shape[-2:]) for name, x in images.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"optical and radar images must have the same size, got {shapes}")
        size = (self.patch_size, self.patch_size)
        valid = batch.get("valid")
        if valid is not None:
            # Zeroed here, not only by the data set: whatever a batch holds under nodata, the
            # model's inputs, and so its losses, are the same.
            hide = ~valid.unsqueeze(1)
            images = {name: x.float().masked_fill(hide, 0.0) for name, x in images.items()}
        patches = {name: patchify(x.float(), size) for name, x in images.items()}
        first = next(iter(images.values()))
        grid = patch_grid(first.shape[-2:], size)
        positions = grid_positions(grid, first.device).float()
        batch_size = first.shape[0]
        values = torch.cat(list(patches.values()), dim=-1)
        if valid is not None:
            patches["valid"] = patchify(valid.unsqueeze(1), size)
        return Tokens(
            values=values,
            positions=positions.expand(batch_size, *positions.shape),
            grid=grid,
            extras=patches,
        )


@dataclass
class CromaLatent:
    """What the masked encoders produce for one training step (visible tokens only)."""

    optical: Tensor
    radar: Tensor
    joint: Tensor
    optical_pooled: Tensor
    radar_pooled: Tensor
    visible: Tensor  # [B, K] token indices each encoder saw (one set: the mask is shared)


@dataclass
class CromaFeatures:
    """Unmasked encodings of whichever sensors the batch holds (None for absent ones).

    `*_pooled` match torchgeo's `optical_GAP`, `sar_GAP` and `joint_GAP`.
    """

    optical: Tensor | None = None
    radar: Tensor | None = None
    joint: Tensor | None = None
    optical_pooled: Tensor | None = None
    radar_pooled: Tensor | None = None
    joint_pooled: Tensor | None = None


def select_embedding(pooled: dict[str, Tensor | None], embedding: str) -> Tensor:
    """The `[B, D]` (or `[B, 3D]` for concat) embedding named by `embedding` from pooled vectors
    keyed "optical", "radar", "joint"; shared by `CromaEncoder.pool` and the torchgeo loader."""
    if embedding not in EMBEDDINGS:
        raise ValueError(f"model.embedding must be one of {EMBEDDINGS}, got {embedding!r}")
    if embedding == "concat":
        present = [
            pooled[name] for name in ("optical", "radar", "joint") if pooled[name] is not None
        ]
        return torch.cat(present, dim=-1)  # type: ignore[arg-type]
    chosen = pooled[embedding]
    if chosen is None:
        raise ValueError(f"model.embedding={embedding!r} needs a batch holding that sensor")
    return chosen


class CromaEncoder(Encoder):
    """Optical, radar and joint encoders plus the pooled-representation FFNs.

    Attribute names equal torchgeo's `CROMA` (`s2_encoder`, `s1_encoder`, `s2_GAP_FFN`,
    `s1_GAP_FFN`, `joint_encoder`), so its state dict is torchgeo's minus the size-bound
    `attn_bias` buffer: our bias is computed from token positions, for any grid.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        radar_bands: int,
        optical_bands: int,
        embedding: str = "concat",
    ) -> None:
        super().__init__()
        if depth < 2 or depth % 2:
            raise ValueError(
                f"model.depth must be even and >= 2 (radar/joint get half), got {depth}"
            )
        if embedding not in EMBEDDINGS:
            raise ValueError(f"model.embedding must be one of {EMBEDDINGS}, got {embedding!r}")
        pixels = patch_size * patch_size
        self.embedding = embedding
        self.s1_encoder = ViT(dim, depth // 2, num_heads, pixels * radar_bands)
        self.s2_encoder = ViT(dim, depth, num_heads, pixels * optical_bands)
        self.s1_GAP_FFN = gap_ffn(dim)
        self.s2_GAP_FFN = gap_ffn(dim)
        self.joint_encoder = BaseTransformerCrossAttn(dim, depth // 2, num_heads)
        self.register_buffer("slopes", alibi_slopes(num_heads), persistent=False)
        self._grid_bias: tuple[tuple[Any, ...], Tensor] | None = None

    def position_bias(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """2D-ALiBi (X-ALiBi when queries and keys differ) `[B, H, Nq, Nk]`."""
        return alibi_2d(query_positions, key_positions, self.slopes)

    def _full_grid_bias(self, tokens: Tokens) -> Tensor:
        """`[1, H, N, N]` for the whole grid, cached per grid and device: unmasked inference
        repeats the same grid batch after batch."""
        key = (tokens.grid, tokens.device)
        if self._grid_bias is None or self._grid_bias[0] != key:
            positions = tokens.positions[:1]  # type: ignore[index]
            self._grid_bias = (key, self.position_bias(positions, positions))
        return self._grid_bias[1]

    def forward(self, tokens: Tokens, mask: Tensor) -> CromaLatent:
        missing = [name for name in ("optical", "radar") if name not in tokens.extras]
        if missing:
            raise ValueError(f"CROMA pretraining needs both sensors; the batch lacks {missing}")
        visible, _ = mask_to_indices(mask)
        positions = gather_tokens(tokens.positions, visible)
        bias = self.position_bias(positions, positions)
        optical = self.s2_encoder(gather_tokens(tokens.extras["optical"], visible), bias)
        radar = self.s1_encoder(gather_tokens(tokens.extras["radar"], visible), bias)
        # X-ALiBi: radar queries and optical keys sit at the same (shared-mask) positions.
        joint = self.joint_encoder(radar, optical, bias, bias)
        return CromaLatent(
            optical=optical,
            radar=radar,
            joint=joint,
            optical_pooled=self.s2_GAP_FFN(optical.mean(1)),
            radar_pooled=self.s1_GAP_FFN(radar.mean(1)),
            visible=visible,
        )

    def forward_features(self, tokens: Tokens) -> CromaFeatures:
        bias = self._full_grid_bias(tokens)
        features = CromaFeatures()
        if "optical" in tokens.extras:
            features.optical = self.s2_encoder(tokens.extras["optical"], bias)
            features.optical_pooled = self.s2_GAP_FFN(features.optical.mean(1))
        if "radar" in tokens.extras:
            features.radar = self.s1_encoder(tokens.extras["radar"], bias)
            features.radar_pooled = self.s1_GAP_FFN(features.radar.mean(1))
        if features.optical is not None and features.radar is not None:
            features.joint = self.joint_encoder(features.radar, features.optical, bias, bias)
            features.joint_pooled = features.joint.mean(1)
        return features

    def pool(self, features: CromaFeatures, tokens: Tokens) -> Tensor:
        pooled = {
            "optical": features.optical_pooled,
            "radar": features.radar_pooled,
            "joint": features.joint_pooled,
        }
        return select_embedding(pooled, self.embedding)


@dataclass
class SensorPatches:
    """Per-sensor patch tensors `[B, N, p * p * C]`: a prediction or a target.

    A target also carries `valid` (`[B, N, p * p]` bool, pixels holding data), or None when
    every pixel does.
    """

    optical: Tensor
    radar: Tensor
    valid: Tensor | None = None


def patch_moments(patches: Tensor, weights: Tensor | None) -> tuple[Tensor, Tensor]:
    """Per-token mean and `sqrt(var + 1e-6)` over the last dim, `[..., 1]` each, counting only
    values whose weight is 1 (all when `weights` is None); shared by the target and the figures.

    Without weights this is `omnimask.patching.per_patch_normalize`'s (MAE's) statistics:
    unbiased variance, eps inside the root. A token without any valid value gets mean 0 and
    std sqrt(eps); its target is never scored.
    """
    eps = 1e-6
    if weights is None:
        mean = patches.mean(dim=-1, keepdim=True)
        var = (patches - mean).square().sum(dim=-1, keepdim=True) / (patches.shape[-1] - 1)
        return mean, (var + eps).sqrt()
    count = weights.sum(dim=-1, keepdim=True)
    mean = (patches * weights).sum(dim=-1, keepdim=True) / count.clamp_min(1.0)
    var = ((patches - mean) * weights).square().sum(dim=-1, keepdim=True)
    return mean, (var / (count - 1.0).clamp_min(1.0) + eps).sqrt()


def value_weights(valid: Tensor, values: int) -> Tensor:
    """Pixel validity `[B, N, p * p]` -> float weights for patches of `values` values per token
    (laid out pixel by pixel, channels last)."""
    return valid.repeat_interleave(values // valid.shape[-1], dim=-1).float()


def joint_weights(valid: Tensor | None, optical: Tensor, radar: Tensor) -> Tensor | None:
    """Weights for `cat([optical, radar], -1)`, each sensor's patch laid out on its own."""
    if valid is None:
        return None
    return torch.cat(
        [value_weights(valid, optical.shape[-1]), value_weights(valid, radar.shape[-1])], dim=-1
    )


class CromaDecoder(Decoder):
    """Joint encodings + mask tokens -> pixels of both sensors for every patch.

    As in CROMA's decoder: a linear map to the decoder width, learned mask tokens at the hidden
    positions, fixed 2D sin-cos position embeddings (not learned; computed for any grid), a
    shallow transformer without attention bias, and one linear head for all channels.
    """

    def __init__(
        self,
        encoder_dim: int,
        dim: int,
        depth: int,
        num_heads: int,
        patch_size: int,
        radar_bands: int,
        optical_bands: int,
    ) -> None:
        super().__init__()
        pixels = patch_size * patch_size
        self.optical_values = pixels * optical_bands
        self.encoder_to_decoder = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(dim) * 0.02)
        self.decoder = BaseTransformer(dim, depth, num_heads)
        self.linear_output = nn.Linear(dim, pixels * (optical_bands + radar_bands))

    def forward(self, latent: CromaLatent, tokens: Tokens, mask: Tensor) -> SensorPatches:
        x = self.encoder_to_decoder(latent.joint)
        x = scatter_tokens(x, latent.visible, tokens.num_tokens, self.mask_token)
        position = build_sincos2d_pos_embed(
            list(tokens.grid),
            dim=x.shape[-1],
            device=x.device,  # type: ignore[arg-type]
        )
        pixels = self.linear_output(self.decoder(x + position.to(x.dtype), None))
        return SensorPatches(pixels[..., : self.optical_values], pixels[..., self.optical_values :])


class CromaTarget(Target):
    """Per-patch normalised pixels of both sensors; MSE on the hidden patches of each.

    As in CROMA's code, each patch is standardised over all its optical and radar values
    together, then split back by sensor. With nodata (`tokens.extras["valid"]`), the patch
    statistics and each patch's error use its valid pixels only, and hidden patches without a
    valid pixel are left out of the mean over patches; with every pixel valid this is the
    unmasked loss.
    """

    def forward(self, batch: Batch, tokens: Tokens) -> SensorPatches:
        optical, radar = tokens.extras["optical"], tokens.extras["radar"]
        valid = tokens.extras.get("valid")
        joint = torch.cat([optical, radar], dim=-1)
        mean, std = patch_moments(joint, joint_weights(valid, optical, radar))
        normalised = (joint - mean) / std
        return SensorPatches(
            normalised[..., : optical.shape[-1]], normalised[..., optical.shape[-1] :], valid
        )

    def loss(
        self, prediction: SensorPatches, target: SensorPatches, mask: Tensor
    ) -> dict[str, Tensor]:
        hidden = mask.float()  # counted in float32 also under bf16 autocast
        if target.valid is not None:
            hidden = hidden * target.valid.any(-1).float()  # patches with data

        def masked_mse(predicted: Tensor, wanted: Tensor) -> Tensor:
            error = (predicted - wanted).pow(2)
            if target.valid is None:
                per_patch = error.mean(-1)
            else:
                weights = value_weights(target.valid, error.shape[-1])
                per_patch = (error * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)
            return (per_patch.float() * hidden).sum() / hidden.sum().clamp_min(1.0)

        return {
            "reconstruction_optical": masked_mse(prediction.optical, target.optical),
            "reconstruction_radar": masked_mse(prediction.radar, target.radar),
        }


class CromaModel(MaskedModel):
    """`MaskedModel` with CROMA's two objectives: contrastive + reconstruction of both sensors."""

    def __init__(
        self,
        tokenizer: CromaTokenizer,
        masker: RandomMasker,
        encoder: CromaEncoder,
        decoder: CromaDecoder,
        target: CromaTarget,
        contrastive: ContrastiveHead,
        contrastive_weight: float = 1.0,
        reconstruction_weight: float = 1.0,
    ) -> None:
        super().__init__(tokenizer, masker, encoder, decoder, target)
        self.contrastive = contrastive
        self.contrastive_weight = contrastive_weight
        self.reconstruction_weight = reconstruction_weight

    def predict(self, batch: Batch, generator: torch.Generator | None = None) -> MaskedOutput:
        tokens = self.tokenizer(batch)
        mask = self.draw_mask(tokens, batch, generator)  # one mask, applied to both sensors
        latent: CromaLatent = self.encoder(tokens, mask)
        prediction = self.decoder(latent, tokens, mask)
        target = self.target(batch, tokens)
        num_tokens = tokens.count_tensor()
        losses = self.target.loss(prediction, target, mask)
        contrastive = self.contrastive(latent.optical_pooled, latent.radar_pooled)
        reconstruction = losses["reconstruction_optical"] + losses["reconstruction_radar"]
        loss = self.contrastive_weight * contrastive + self.reconstruction_weight * reconstruction
        losses = {**losses, "contrastive": contrastive, "loss": loss, "num_tokens": num_tokens}
        return MaskedOutput(tokens, mask, prediction, target, losses)
