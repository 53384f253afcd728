"""VideoMAE (Tong et al., 2022): tubelet tokens, tube masking, a ViT on the visible tubelets only,
a light decoder, and MSE on per-tubelet normalised pixels of the hidden tubelets.

The encoder *is* a `transformers.VideoMAEModel` (its parameters, layers and final norm), so the
`hf` export is `save_pretrained` and `AutoModel.from_pretrained` gives the same features. Two
things are done differently from Hugging Face's forward, both for speed and neither changing the
maths:

- the Conv3d patch embedding is applied as the equivalent linear map to the *visible* tubelets
  only (Hugging Face convolves the whole clip, then throws 90% of it away);
- the decoder is built from timm's `Block` (fused qkv projection and
  `scaled_dot_product_attention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from omnimask import Decoder, Encoder, Target, Tokens
from omnimask.gather import mask_to_indices
from omnimask.patching import grid_positions, patch_grid, patchify, per_patch_normalize
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from transformers import VideoMAEConfig, VideoMAEModel

LAYER_NORM_EPS = 1e-6  # VideoMAE's; Hugging Face's config default is 1e-12


class TubeletTokenizer(nn.Module):
    """`batch["video"]` `[B, C, T, H, W]` -> tubelet tokens `[B, N, t*p*p*C]` on a `(T/t, H/p, W/p)`
    grid (core `patchify`: row-major over the grid, channels last inside a tubelet)."""

    def __init__(self, tubelet: Sequence[int]) -> None:
        super().__init__()
        self.tubelet = tuple(tubelet)

    def forward(self, batch: dict) -> Tokens:
        video = batch["video"]
        grid = patch_grid(video.shape[2:], self.tubelet)
        positions = grid_positions(grid, video.device).unsqueeze(0).expand(video.shape[0], -1, -1)
        return Tokens(values=patchify(video, self.tubelet), positions=positions, grid=grid)


def hf_config(
    num_frames: int,
    size: int,
    tubelet: int,
    patch: int,
    dim: int,
    depth: int,
    heads: int,
    mlp_ratio: float,
) -> VideoMAEConfig:
    """The `VideoMAEConfig` of our encoder (the decoder fields are Hugging Face's concern only)."""
    return VideoMAEConfig(
        image_size=size,
        patch_size=patch,
        num_frames=num_frames,
        tubelet_size=tubelet,
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=int(dim * mlp_ratio),
        layer_norm_eps=LAYER_NORM_EPS,
        use_mean_pooling=False,  # keep the final LayerNorm, as VideoMAE's pretraining encoder does
        attn_implementation="sdpa",
    )


class VideoMAEEncoder(Encoder):
    """A `transformers.VideoMAEModel` run on the visible tubelets (joint space-time attention)."""

    def __init__(self, config: VideoMAEConfig) -> None:
        super().__init__()
        self.hf = VideoMAEModel(config)
        # Hugging Face keeps its fixed sin-cos table as a plain attribute; a buffer follows .to().
        table = self.hf.embeddings.position_embeddings.detach().clone()
        self.register_buffer("pos_embed", table, persistent=False)

    def embed_tubelets(self, patches: Tensor, index: Tensor | None) -> Tensor:
        """Patch + position embedding of the tubelets `index` selects (all when None).

        The Conv3d weight `[D, C, t, p, p]` is the linear map on `(t, p, p, C)`-laid-out
        tubelets after a permute, so projecting only what is kept gives identical values.
        """
        projection = self.hf.embeddings.patch_embeddings.projection
        weight = projection.weight.permute(0, 2, 3, 4, 1).flatten(1)
        positions = self.pos_embed[0].to(patches.dtype)  # [N, D]
        if index is None:
            return F.linear(patches, weight, projection.bias) + positions
        # Plain indexing rather than `gather_tokens`: torch.gather with an index expanded over
        # the feature dim is about 10x slower on CPU than this row copy.
        rows = torch.arange(index.shape[0], device=index.device).unsqueeze(1)
        return F.linear(patches[rows, index], weight, projection.bias) + positions[index]

    def run_layers(self, x: Tensor) -> Tensor:
        for layer in self.hf.encoder.layer:
            x = layer(x)
        return self.hf.layernorm(x)

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        visible, _ = mask_to_indices(mask)
        return self.run_layers(self.embed_tubelets(tokens.values, visible))

    def forward_features(self, tokens: Tokens) -> Tensor:
        return self.run_layers(self.embed_tubelets(tokens.values, None))


def sincos_table(num_positions: int, dim: int) -> Tensor:
    """VideoMAE's fixed 1-D sin-cos table `[1, N, dim]` over flattened tubelet positions."""
    position = torch.arange(num_positions, dtype=torch.float64).unsqueeze(1)
    exponent = 2 * (torch.arange(dim) // 2) / dim
    angles = position / torch.pow(10000.0, exponent.to(torch.float64))
    table = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return table.float().unsqueeze(0)


class VideoMAEDecoder(Decoder):
    """Light transformer over [visible latents ; mask tokens] -> pixels of the hidden tubelets.

    As in VideoMAE, tokens are not put back in grid order: attention does not care about order
    once each token carries its position embedding, so the hidden tubelets are simply appended
    and their predictions read off the end (in increasing position, `mask_to_indices`' order).
    """

    def __init__(
        self,
        encoder_dim: int,
        dim: int,
        depth: int,
        heads: int,
        num_tokens: int,
        out_dim: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.register_buffer("pos_embed", sincos_table(num_tokens, dim), persistent=False)
        norm = partial(nn.LayerNorm, eps=LAYER_NORM_EPS)
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(depth)
        )
        self.norm = norm(dim)
        self.head = nn.Linear(dim, out_dim)
        for module in [self.embed, self.head, *self.blocks.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        visible, hidden = mask_to_indices(mask)
        table = self.pos_embed[0].to(latent.dtype)  # [N, dim]
        queries = self.mask_token + table[hidden]
        x = torch.cat([self.embed(latent) + table[visible], queries], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -hidden.shape[1] :]))


class TubeletPixelTarget(Target):
    """Pixels of each tubelet, normalised per tubelet; MSE over the hidden tubelets only.

    The model sees standardised frames `(x - mean_c) / std_c`; targets are defined on the
    pixels x in [0, 1]. With `per_channel` (VideoMAE's choice) each colour channel of a tubelet
    is standardised on its own, otherwise the whole tubelet at once (MAE's `norm_pix_loss`).

    Per-channel standardisation cannot see a per-channel affine map except through eps:
    standardising `x` with eps equals standardising `(x - mean_c) / std_c` with `eps / std_c**2`.
    So the per-channel target is computed from the model input directly, with that eps, which is
    exact and skips un-normalising every pixel of the clip each step.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], norm_pix: bool = True,
                 per_channel: bool = True, eps: float = 1e-6) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32), persistent=False)
        self.norm_pix = norm_pix
        self.per_channel = per_channel
        self.eps = eps

    def pixels(self, tokens: Tokens) -> Tensor:
        """Tubelets in [0, 1], laid out `[B, N, t*p*p, C]`."""
        values = tokens.values.unflatten(-1, (-1, len(self.mean)))
        return values * self.std.to(values.dtype) + self.mean.to(values.dtype)

    def forward(self, batch: dict, tokens: Tokens) -> Tensor:
        with torch.no_grad():
            if not self.norm_pix:
                return self.pixels(tokens).flatten(2)
            if not self.per_channel:
                return per_patch_normalize(self.pixels(tokens).flatten(2), self.eps)
            channels_first = tokens.values.unflatten(-1, (-1, len(self.std))).transpose(-1, -2)
            eps = (self.eps / self.std.to(channels_first.dtype) ** 2).unsqueeze(-1)  # [C, 1]
            return per_patch_normalize(channels_first, eps).transpose(-1, -2).flatten(2)

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        # Boolean indexing lists each row's hidden tubelets in increasing position, as predicted.
        return {"loss": F.mse_loss(prediction, target[mask].view_as(prediction))}
