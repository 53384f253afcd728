"""timm Vision Transformers as masked-image encoders: MAE (visible tokens only) and SimMIM
(mask token). Both keep the timm model intact, so the pretrained encoder loads into
`timm.create_model` unchanged; they differ only in how masked patches are skipped."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omnimask import Decoder, Encoder, Target, Tokens
from omnimask.gather import mask_to_indices
from omnimask.model import Batch
from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from omnimask_vision.models.spark import PatchNormalizedPixels


def check_plain_vit(model: nn.Module) -> VisionTransformer:
    """The model, if it is a timm ViT with one class token and a position embedding over it."""
    if not isinstance(model, VisionTransformer):
        name = type(model).__name__
        raise ValueError(f"MAE and SimMIM need a timm VisionTransformer, got {name}")
    if model.num_prefix_tokens != 1 or model.cls_token is None or model.no_embed_class:
        raise ValueError(
            "MAE/SimMIM encoders need a ViT with one class token, no register tokens and a "
            "position embedding that covers the class token (timm's default vit_* models)"
        )
    if model.pos_embed is None or model.dynamic_img_size:
        raise ValueError("MAE/SimMIM encoders need a fixed-size absolute position embedding")
    return model


def sincos_position_embedding(grid: tuple[int, int], dim: int) -> Tensor:
    """`[1, 1 + N, dim]` fixed 2-D sin-cos embedding with a zero class-token row (as MAE)."""
    table = build_sincos2d_pos_embed(list(grid), dim)
    return torch.cat([torch.zeros(1, dim), table]).unsqueeze(0)


class ViTEncoder(Encoder):
    """Shared part of the ViT encoders: unmasked features and the patch-token mean embedding."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = check_plain_vit(model)

    def forward_features(self, tokens: Tokens) -> Tensor:
        return self.model.forward_features(tokens.extras["image"])

    def pool(self, features: Tensor, tokens: Tokens) -> Tensor:
        """Mean of the patch tokens (MAE's global-pool setting), class token excluded."""
        return features[:, self.model.num_prefix_tokens :].mean(1)

    def _run_blocks(self, x: Tensor) -> Tensor:
        return self.model.norm(self.model.blocks(self.model.norm_pre(x)))


class MAEEncoder(ViTEncoder):
    """MAE: the ViT runs on the visible patch tokens only (gathered), plus its class token.

    The position embedding is MAE's fixed sin-cos table, frozen, written into the timm model's
    own `pos_embed` so the exported weights carry it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        proj = self.model.patch_embed.proj
        if not (
            isinstance(proj, nn.Conv2d)
            and proj.kernel_size == proj.stride
            and proj.padding == (0, 0)
            and proj.groups == 1
        ):
            raise ValueError(
                f"MAE needs a ViT whose patch embedding is one linear map per patch (a "
                f"convolution with kernel = stride, no padding); got {proj}"
            )
        grid = tuple(self.model.patch_embed.grid_size)
        table = sincos_position_embedding(grid, self.model.embed_dim)
        with torch.no_grad():
            self.model.pos_embed.copy_(table)
        self.model.pos_embed.requires_grad_(False)

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        """`[B, 1 + K, D]`: the class token, then the K visible tokens in grid order."""
        vit = self.model
        visible, _ = mask_to_indices(mask)
        rows = torch.arange(visible.shape[0], device=visible.device).unsqueeze(1)
        # Plain indexing rather than `gather_tokens`: torch.gather with an index expanded over
        # the feature dim is about 10x slower on CPU than this row copy.
        x = self.embed_patches(tokens.values[rows, visible]) + vit.pos_embed[0, 1:][visible]
        cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        return self._run_blocks(torch.cat([cls, x], dim=1))

    def embed_patches(self, patches: Tensor) -> Tensor:
        """timm's patch embedding applied to the visible patches only (`patchify` layout).

        The patch embedding is a convolution whose kernel equals its stride, i.e. one linear map
        per patch, so running it as a linear layer on the K visible patches gives exactly what
        the convolution gives at those positions, for a quarter of the work at 75% masking
        (MAE's reference code embeds every patch and then drops three quarters).
        """
        embed = self.model.patch_embed
        proj = embed.proj
        weight = proj.weight.permute(0, 2, 3, 1).flatten(1)  # (h, w, c) order, as patchify's
        return embed.norm(F.linear(patches, weight, proj.bias))


class MAEDecoder(Decoder):
    """MAE's decoder: project, add mask tokens for the hidden patches, transformer blocks with a
    fixed sin-cos position embedding, then a linear head to the pixels of each hidden patch.

    Three things differ from MAE's reference code, all for speed and none changing the maths:

    - tokens are not put back in grid order: every token carries its position embedding and the
      blocks (attention, MLP, norms) do not depend on the order, so the sequence is simply
      `[class ; visible ; hidden]` (VideoMAE's decoder does the same) and needs no unshuffle;
    - the last block computes outputs for the hidden tokens only (`block_on_last_tokens`);
    - the final norm and the head run on the hidden tokens only, which are all the loss scores
      (MAE's reference predicts every patch, then drops the visible quarter).

    `forward` returns `[B, M, patch * patch * 3]`: each row's M hidden patches in increasing
    position (the order of `mask_to_indices`' hidden indices and of `tensor[mask]`).

    Its last block runs by parts, not through its `forward`, so FSDP shards the decoder as one
    unit (`fsdp_unit`, `omnimask.engine.fsdp`): the block's own unit would not be gathered.
    """

    fsdp_unit = True

    def __init__(
        self,
        encoder_dim: int,
        grid: tuple[int, int],
        patch: int,
        width: int,
        depth: int,
        heads: int,
    ) -> None:
        super().__init__()
        self.num_tokens = grid[0] * grid[1]
        self.embed = nn.Linear(encoder_dim, width)
        self.mask_token = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("pos_embed", sincos_position_embedding(grid, width), persistent=False)
        self.blocks = nn.Sequential(
            *[Block(width, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, patch * patch * 3)

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        return self.reconstruct(*self.sequence(latent, mask))

    def reconstruct(self, x: Tensor, hidden_count: int) -> Tensor:
        """The pixels of the `hidden_count` tokens at the end of the sequence `x`."""
        x = block_on_last_tokens(self.blocks[-1], self.blocks[:-1](x), hidden_count)
        return self.head(self.norm(x))

    def sequence(self, latent: Tensor, mask: Tensor) -> tuple[Tensor, int]:
        """The blocks' input `[class ; visible ; hidden]` with position embeddings and mask
        tokens, and the number of hidden tokens at its end."""
        visible, hidden = mask_to_indices(mask)
        x = self.embed(latent)
        table = self.pos_embed[0, 1:].to(x.dtype)  # [N, width]; the class token's row is zero
        queries = self.mask_token.to(x.dtype) + table[hidden]
        return torch.cat([x[:, :1], x[:, 1:] + table[visible], queries], dim=1), hidden.shape[1]


def block_on_last_tokens(block: Block, x: Tensor, count: int) -> Tensor:
    """`block(x)[:, -count:]` for a timm `Block`, computing only what those tokens need.

    Every token is still a key and a value, but queries, the attention projection, the MLP, the
    norms and the residuals are per-token maps, so running them on the last `count` tokens alone
    gives the values of the full block followed by the slice.
    """
    attn = block.attn
    if attn.gate is not None:
        raise ValueError("block_on_last_tokens does not support gated attention")
    batch, length, _ = x.shape
    heads, head_dim, width = attn.num_heads, attn.head_dim, attn.attn_dim
    y = block.norm1(x)
    weight, bias = attn.qkv.weight, attn.qkv.bias
    q = F.linear(y[:, -count:], weight[:width], None if bias is None else bias[:width])
    kv = F.linear(y, weight[width:], None if bias is None else bias[width:])
    q = attn.q_norm(q.view(batch, count, heads, head_dim).transpose(1, 2))
    k, v = kv.view(batch, length, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    dropout = attn.attn_drop.p if block.training else 0.0
    y = F.scaled_dot_product_attention(q, attn.k_norm(k), v, dropout_p=dropout)
    y = attn.proj_drop(attn.proj(attn.norm(y.transpose(1, 2).reshape(batch, count, width))))
    x = x[:, -count:] + block.drop_path1(block.ls1(y))
    return x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))


class HiddenPatchPixels(PatchNormalizedPixels):
    """MAE's target and loss: pixels normalised per patch (raw with `per_patch=False`), mean
    squared error over the hidden patches, for a decoder that predicts those only (`prediction`
    `[B, M, D]`, each row's hidden patches in increasing position)."""

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        # Boolean indexing lists each row's hidden patches in increasing position, as predicted.
        return {"loss": F.mse_loss(prediction, target[mask].view_as(prediction))}


class SimMIMEncoder(ViTEncoder):
    """SimMIM: every patch is encoded; a learnable mask token replaces the masked embeddings."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.mask_token = nn.Parameter(torch.zeros(self.model.embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        vit = self.model
        x = vit.patch_embed(tokens.extras["image"])
        x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        cls = vit.cls_token.expand(x.shape[0], -1, -1)
        x = vit.pos_drop(torch.cat([cls, x], dim=1) + vit.pos_embed)
        return self._run_blocks(x)


class LinearPixelHead(Decoder):
    """SimMIM's one-layer head: each patch token -> its `patch x patch x 3` pixels."""

    def __init__(self, encoder_dim: int, patch: int) -> None:
        super().__init__()
        self.linear = nn.Linear(encoder_dim, patch * patch * 3)

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        return self.linear(latent[:, 1:])


class MaskedPixelL1(Target):
    """SimMIM's target: raw (ImageNet-normalised) pixels, L1 averaged over masked pixels."""

    per_patch = False

    def forward(self, batch: Batch, tokens: Tokens) -> Tensor:
        return tokens.values

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        per_patch = (prediction - target).abs().mean(-1)
        weights = mask.to(per_patch.dtype)
        return {"loss": (per_patch * weights).sum() / weights.sum().clamp_min(1.0)}
