"""Point-BERT's masked point modelling (stage 2): masked patch embeddings are replaced by a
learned mask token (positions kept), a Transformer encodes every patch, and a linear head
predicts, for each masked patch, the code the frozen stage-1 dVAE gives it (cross-entropy on
masked patches only).

With point-patch mixing (`PointBERTModel`, Point-BERT's `cutmix_loss`): each cloud also trades
a random share of its patches with another cloud of the batch; the mixed cloud is block-masked
and its codes predicted the same way, and its [CLS] feature must find, against a queue of past
clouds, the momentum encoder's [CLS] features of both sources, each weighted by its share
(MoCo-style InfoNCE). Point-BERT's `Point_BERT.forward`: loss = code cross-entropy of the clean
and of the mixed cloud + the contrastive term.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from omnimask import LOSS_WEIGHT, Decoder, Encoder, MaskedModel, MaskedOutput, Target, Tokens
from omnimask.seeding import mix_seed
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
        return self.encode_embedded(self.patch_embed(tokens.extras["neighbourhood"]), tokens, mask)

    def encode_embedded(self, x: Tensor, tokens: Tokens, mask: Tensor | None) -> Tensor:
        """`encode` from patch embeddings `x` `[B, G, D]` already computed (the mixed cloud's
        are the clean cloud's, rearranged: `PointBERTModel.predict`)."""
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


#: Separate the block masks of the mixed cloud and of the key view from the clean query's: masks
#: are keyed by (step seed, sample id), so the same generator would hide the same draw thrice.
MIXED_MASK_SALT, KEY_MASK_SALT = 1, 2


def salted(generator: torch.Generator, salt: int) -> torch.Generator:
    """A generator whose seed is the step's mixed with `salt` (`draw_mask` reads only the seed)."""
    return torch.Generator().manual_seed(mix_seed(generator.initial_seed(), salt))


def keep_or_mirror(keep: Tensor, x: Tensor) -> Tensor:
    """Per patch, `x`'s own (where `keep` `[B, G]`) or the mirrored cloud's (`x.flip(0)`), for
    any `x` `[B, G, ...]`."""
    return torch.where(keep.view(*keep.shape, *[1] * (x.dim() - 2)), x, x.flip(0))


def mix_patches(
    tokens: Tokens, codes: Tensor, generator: torch.Generator
) -> tuple[Tokens, Tensor, Tensor, Tensor]:
    """Point-BERT's point-patch mixing (`_mixup_pc`): cloud i keeps each patch with probability
    `share_i ~ U(0, 1)` and otherwise takes the patch (points, centre and code) at the same index
    of the cloud mirrored in the batch (`flip(0)`). Returns the mixed tokens, their codes, the
    shares `[B]` and which patches each cloud kept `[B, G]`."""
    batch, groups = codes.shape
    share = torch.rand(batch, generator=generator)
    keep = (torch.rand(batch, groups, generator=generator) < share.unsqueeze(1)).to(codes.device)
    neighbourhood = tokens.extras["neighbourhood"]
    mixed = keep_or_mirror(keep, neighbourhood)
    mixed_tokens = Tokens(values=mixed.flatten(2), positions=keep_or_mirror(keep, tokens.positions),
                          grid=None, extras={"neighbourhood": mixed})  # fmt: skip
    return mixed_tokens, keep_or_mirror(keep, codes), share.to(codes.device), keep


def projection_head(dim: int, out_dim: int) -> nn.Sequential:
    """[CLS] -> contrastive feature (Point-BERT's `cls_head`: Linear, GELU, Linear)."""
    return nn.Sequential(nn.Linear(dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class PointBERTModel(MaskedModel):
    """Masked point modelling plus point-patch mixing and its momentum-contrast term.

    The key encoder and head are momentum copies of the query ones (no gradient); the queue
    holds the normalised key features of past clouds. Both are updated only in training mode,
    so evaluation and `embed` read the model without changing it."""

    def __init__(self, tokenizer: nn.Module, masker: nn.Module, encoder: PointBERTEncoder,
                 decoder: CodeHead, target: DVAECodeTarget, head_dim: int, momentum: float,
                 temperature: float, queue_size: int, weight: float) -> None:  # fmt: skip
        super().__init__(tokenizer, masker, encoder, decoder, target)
        self.head = projection_head(encoder.cls_token.shape[-1], head_dim)
        self.key_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.key_head = copy.deepcopy(self.head).requires_grad_(False)
        self.momentum, self.temperature, self.weight = momentum, temperature, weight
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, head_dim), dim=1))
        self.register_buffer("queue_next", torch.zeros((), dtype=torch.long))

    def predict(self, batch: dict, generator: torch.Generator | None = None) -> MaskedOutput:
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        tokens = self.tokenizer(batch)
        mask = self.draw_mask(tokens, batch, generator)
        embedded = self.encoder.patch_embed(tokens.extras["neighbourhood"])
        features = self.encoder.encode_embedded(embedded, tokens, mask)[:, 1:]
        prediction = self.decoder(features, tokens, mask)
        codes = self.target(batch, tokens)
        num_tokens = tokens.count_tensor()
        losses = self.target.loss(prediction, codes, mask)
        code_loss = losses["loss"]
        mixed, mixed_codes, share, keep = mix_patches(tokens, codes, generator)
        mixed_mask = self.draw_mask(mixed, batch, salted(generator, MIXED_MASK_SALT))
        # the mini-PointNet embeds each patch alone, so the mixed cloud's embeddings are the
        # clean ones rearranged: one pass instead of two (BatchNorm's batch statistics are the
        # clean batch's, which holds every patch the mixed batch draws from)
        mixed_embedded = keep_or_mirror(keep, embedded)
        mixed_features = self.encoder.encode_embedded(mixed_embedded, mixed, mixed_mask)
        mixed_loss = self.target.loss(
            self.decoder(mixed_features[:, 1:], mixed, mixed_mask), mixed_codes, mixed_mask
        )["loss"]
        query = F.normalize(self.head(mixed_features[:, 0]), dim=-1)
        keys = self.keys(tokens, self.draw_mask(tokens, batch, salted(generator, KEY_MASK_SALT)))
        contrast = self.contrast(query, keys, share)
        if self.training:
            self.enqueue(keys)
        loss = code_loss + mixed_loss + self.weight * contrast
        losses = {**losses, "loss": loss, "code_loss": code_loss, "mixed_code_loss": mixed_loss,
                  "contrast": contrast, "num_tokens": num_tokens}  # fmt: skip
        return MaskedOutput(tokens, mask, prediction, codes, losses)

    @torch.no_grad()
    def keys(self, tokens: Tokens, mask: Tensor) -> Tensor:
        """The momentum encoder's normalised [CLS] features of the clean clouds under a block
        mask of their own (Point-BERT's key encoder masks too); in training mode the key weights
        first move toward the query's (MoCo's momentum update, at every forward as in
        Point-BERT)."""
        if self.training:
            pairs = ((self.key_encoder, self.encoder), (self.key_head, self.head))
            for key, query in pairs:
                for k, q in zip(key.parameters(), query.parameters()):
                    k.lerp_(q.detach(), 1 - self.momentum)
        return F.normalize(self.key_head(self.key_encoder.encode(tokens, mask)[:, 0]), dim=-1)

    def contrast(self, query: Tensor, keys: Tensor, share: Tensor) -> Tensor:
        """InfoNCE of each mixed cloud against the keys of the batch and the queue; the key of
        its own source is the positive with weight `share`, the mirrored source's with
        `1 - share` (Point-BERT's `cutmix_loss`)."""
        queue = self.queue.clone()  # enqueue() overwrites it before backward
        logits = torch.cat([query @ keys.t(), query @ queue.t()], dim=1) / self.temperature
        own = torch.arange(len(query), device=query.device)
        to_own = F.cross_entropy(logits, own, reduction="none")
        to_other = F.cross_entropy(logits, own.flip(0), reduction="none")
        return (share * to_own + (1 - share) * to_other).mean()

    @torch.no_grad()
    @torch.compiler.disable
    def enqueue(self, keys: Tensor) -> None:
        """Write the keys of every process over the oldest queue entries."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
            dist.all_gather(gathered, keys)
            keys = torch.cat(gathered)
        size = self.queue.shape[0]
        keys = keys[-size:]
        index = (self.queue_next + torch.arange(len(keys), device=keys.device)) % size
        self.queue[index] = keys
        self.queue_next.copy_((self.queue_next + len(keys)) % size)
