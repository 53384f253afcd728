"""CROMA's transformer blocks, with torchgeo's module names so weights map one to one.

The structure (pre-norm attention and FFN blocks, a cross-attention block that normalises query
and context with one LayerNorm, `to_qkv` without bias, FFN `Linear-GELU-Dropout-Linear`) and the
parameter names follow `torchgeo.models.croma`, so `export --format torchgeo` is a rename-free
copy. The attention itself runs through PyTorch's fused `scaled_dot_product_attention` with the
2D-ALiBi bias as a float `attn_mask`, instead of torchgeo's explicit einsum-softmax-einsum.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """`[B, N, H * d]` -> `[B, H, N, d]`."""
    batch, tokens, width = x.shape
    return x.view(batch, tokens, num_heads, width // num_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    """`[B, H, N, d]` -> `[B, N, H * d]`."""
    batch, heads, tokens, dim = x.shape
    return x.transpose(1, 2).reshape(batch, tokens, heads * dim)


def _attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, dropout: float) -> Tensor:
    # SDPA wants the additive mask in the query's dtype (bf16 under autocast).
    mask = bias.to(q.dtype) if bias is not None else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)


class Attention(nn.Module):
    """Pre-norm multi-head self-attention with an additive position bias."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.input_norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        q, k, v = self.to_qkv(self.input_norm(x)).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, self.num_heads) for t in (q, k, v))
        dropout = self.dropout if self.training else 0.0
        return self.to_out(_merge_heads(_attend(q, k, v, bias, dropout)))


class CrossAttention(nn.Module):
    """Pre-norm cross-attention: queries from `x` (radar), keys and values from `context`
    (optical); one LayerNorm for both, as in CROMA."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.input_norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(dim, dim, bias=False)
        self.to_v = nn.Linear(dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, bias: Tensor | None) -> Tensor:
        x, context = self.input_norm(x), self.input_norm(context)
        q = _split_heads(self.to_q(x), self.num_heads)
        k = _split_heads(self.to_k(context), self.num_heads)
        v = _split_heads(self.to_v(context), self.num_heads)
        dropout = self.dropout if self.training else 0.0
        return self.to_out(_merge_heads(_attend(q, k, v, bias, dropout)))


class FFN(nn.Module):
    """Pre-norm MLP block (GELU, 4x width)."""

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.input_norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(
            nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(mult * dim, dim)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.input_norm(x))


class BaseTransformer(nn.Module):
    """Residual stack of (self-attention, FFN) pairs, then a final LayerNorm."""

    def __init__(self, dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, num_heads), FFN(dim)]) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        for attention, ffn in self.layers:  # type: ignore[misc]
            x = attention(x, bias) + x
            x = ffn(x) + x
        return self.norm_out(x)


class BaseTransformerCrossAttn(nn.Module):
    """CROMA's joint encoder: (self-attention, cross-attention to optical, FFN) per layer."""

    def __init__(self, dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Attention(dim, num_heads), CrossAttention(dim, num_heads), FFN(dim)])
            for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(dim)

    def forward(
        self, x: Tensor, context: Tensor, self_bias: Tensor | None, cross_bias: Tensor | None
    ) -> Tensor:
        for attention, cross_attention, ffn in self.layers:  # type: ignore[misc]
            x = attention(x, self_bias) + x
            x = cross_attention(x, context, cross_bias) + x
            x = ffn(x) + x
        return self.norm_out(x)


class ViT(nn.Module):
    """One sensor's encoder: a linear patch embedding, then `BaseTransformer`.

    Takes patches already cut by `omnimask.patching.patchify` (`[B, N, p * p * C]`), so the same
    module encodes all patches (`forward_features`) or only the visible ones (training).
    """

    def __init__(self, dim: int, depth: int, num_heads: int, patch_values: int) -> None:
        super().__init__()
        self.linear_input = nn.Linear(patch_values, dim)
        self.transformer = BaseTransformer(dim, depth, num_heads)

    def forward(self, patches: Tensor, bias: Tensor | None) -> Tensor:
        return self.transformer(self.linear_input(patches), bias)


def gap_ffn(dim: int) -> nn.Sequential:
    """The FFN applied to globally average-pooled encodings (CROMA's unimodal representation)."""
    return nn.Sequential(
        nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
    )
