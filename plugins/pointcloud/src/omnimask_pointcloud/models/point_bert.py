"""Point-BERT's masked point modelling (stage 2): masked patch embeddings are replaced by a
learned mask token (positions kept), a Transformer encodes every patch, and a linear head
predicts, for each masked patch, the code the frozen stage-1 dVAE gives it (cross-entropy on
masked patches only).

Not built (the paper's extras): point-patch mixing and its MoCo-style contrastive term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omnimask import LOSS_WEIGHT, Decoder, Encoder, Target, Tokens
from torch import Tensor, nn

from omnimask_pointcloud.layers import MiniPointNet, PositionalTransformer, position_mlp
from omnimask_pointcloud.models.dvae import DVAEDecoder, DVAEEncoder, GumbelQuantizer


class PointBERTEncoder(Encoder):
    """[CLS] + patch embeddings (masked ones replaced by the mask token) -> Transformer.

    `forward` returns the patch features `[B, G, D]`; `forward_features` the full sequence
    `[B, 1 + G, D]` whose pooled form is [CLS] beside the max over patches (Point-BERT's
    classification feature)."""

    def __init__(
        self, dim: int, depth: int, heads: int, pointnet_width: int, drop_path: float
    ) -> None:
        super().__init__()
        self.patch_embed = MiniPointNet(dim, pointnet_width)
        self.position = position_mlp(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_position = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        for parameter in (self.cls_token, self.cls_position, self.mask_token):
            nn.init.trunc_normal_(parameter, std=0.02)
        self.transformer = PositionalTransformer(dim, depth, heads, drop_path)

    def encode(self, tokens: Tokens, mask: Tensor | None) -> Tensor:
        x = self.patch_embed(tokens.extras["neighbourhood"])
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), self.mask_token.to(x.dtype), x)
        batch = x.shape[0]
        x = torch.cat([self.cls_token.expand(batch, -1, -1), x], dim=1)
        positions = torch.cat(
            [self.cls_position.expand(batch, -1, -1), self.position(tokens.positions)], dim=1
        )
        return self.transformer(x, positions)

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        return self.encode(tokens, mask)[:, 1:]

    def forward_features(self, tokens: Tokens) -> Tensor:
        return self.encode(tokens, None)

    def pool(self, features: Tensor, tokens: Tokens) -> Tensor:
        return torch.cat([features[:, 0], features[:, 1:].max(1).values], dim=-1)

    def no_weight_decay(self) -> set[str]:
        return {"cls_token", "cls_position", "mask_token"}


class CodeHead(Decoder):
    """Patch features -> logits over the dVAE vocabulary `[B, G, V]`."""

    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        return self.head(latent)


class FrozenDVAE(nn.Module):
    """The stage-1 parts the MPM stage keeps: the encoder gives targets; the quantizer's codebook
    and the decoder turn predicted codes back into points for figures."""

    def __init__(
        self, encoder: DVAEEncoder, quantizer: GumbelQuantizer, decoder: DVAEDecoder
    ) -> None:
        super().__init__()
        self.encoder, self.quantizer, self.decoder = encoder, quantizer, decoder

    @torch.no_grad()
    def decode(self, codes: Tensor, tokens: Tokens) -> Tensor:
        """Codes `[B, G]` -> fine patch points `[B, G, k, 3]` relative to the centres."""
        _, fine = self.decoder(
            self.quantizer.codebook[codes], tokens, codes.new_zeros(codes.shape, dtype=torch.bool)
        )
        return fine


class DVAECodeTarget(Target):
    """Target: the frozen dVAE's code of every patch `[B, G]`; loss: cross-entropy over the
    masked patches only (visible patches' logits do not enter the loss).

    The dVAE stays in eval mode and receives no gradient whatever mode the model is put in.
    """

    def __init__(self, dvae: FrozenDVAE) -> None:
        super().__init__()
        self.dvae = dvae.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> DVAECodeTarget:
        super().train(mode)
        self.dvae.eval()
        return self

    def forward(self, batch: dict, tokens: Tokens) -> Tensor:
        return self.dvae.encoder.codes(tokens)

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """Cross-entropy over the masked patches of the batch; block masking hides a different
        number per cloud, so the count goes with it (`LOSS_WEIGHT`) and the engine weighs
        processes and micro-batches by it, as one batch of all their clouds would."""
        logits, codes = prediction[mask], target[mask]
        loss = F.cross_entropy(logits.float(), codes)
        accuracy = (logits.argmax(-1) == codes).float().mean()
        count = mask.sum().float()
        return {"loss": loss, "code_accuracy": accuracy.detach(), LOSS_WEIGHT: count}
