"""The four protocols and `MaskedModel`, the composition every pipeline trains.

One step of every pipeline is the same walk::

    batch --Tokenizer--> Tokens --Masker--> mask --Encoder(tokens, mask)--> latent
          --Decoder(latent, tokens, mask)--> prediction
    Target(batch, tokens) --> target ; Target.loss(prediction, target, mask) --> {"loss": ...}

Models know nothing about the engine: `MaskedModel.forward(batch, generator)` returns a dict of
named losses, "loss" being the one optimised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from omnimask.seeding import sample_seeds
from omnimask.tokens import Tokens

Batch = dict[str, Any]


@runtime_checkable
class Tokenizer(Protocol):
    """batch -> Tokens. May be an `nn.Module` with parameters (a learned tokenizer)."""

    def __call__(self, batch: Batch) -> Tokens: ...


@runtime_checkable
class Masker(Protocol):
    """Token layout -> bool mask `[B, N]`, True = hidden from the encoder.

    All randomness comes from `generator` (a CPU `torch.Generator`), so a seed reproduces the mask.
    """

    def __call__(self, tokens: Tokens, generator: torch.Generator) -> Tensor: ...


class Encoder(nn.Module):
    """`forward(tokens, mask) -> latent`; `forward_features(tokens)` for unmasked use downstream.

    The encoder decides how masked tokens are skipped: gathering the visible ones (MAE), sparse
    convolution (SparK), or replacing them by a mask token (SimMIM, BERT).
    """

    def forward(self, tokens: Tokens, mask: Tensor) -> Any:
        raise NotImplementedError

    def forward_features(self, tokens: Tokens) -> Any:
        raise NotImplementedError

    def pool(self, features: Any, tokens: Tokens) -> Tensor:
        """One vector per sample `[B, D]` from `forward_features`, for probes and kNN.

        The default averages the real (non-padding) tokens of a `[B, N, D]` output, or the last
        map of a hierarchical CNN's list of `[B, C, ...]` feature maps.
        """
        if isinstance(features, (list, tuple)):
            last = features[-1]
            return last.flatten(2).mean(-1)
        if tokens.padding is None or features.shape[1] != tokens.num_tokens:
            return features.mean(1)
        keep = (~tokens.padding).unsqueeze(-1).to(features.dtype)
        return (features * keep).sum(1) / keep.sum(1).clamp_min(1.0)


class Decoder(nn.Module):
    """latent -> prediction in target space. Lightweight by default."""

    def forward(self, latent: Any, tokens: Tokens, mask: Tensor) -> Tensor:
        raise NotImplementedError


#: Optional key of a loss dict: how many units (masked tokens, frames) the `loss` is a mean over.
#: The engine then weighs micro-batches and processes by it, so that a step's gradient is that
#: of the mean over all units of the global batch, whatever its split (the `num_items_in_batch`
#: of Hugging Face's Trainer). Without it, every sample of the global batch weighs the same.
LOSS_WEIGHT = "loss_weight"


class Target(nn.Module):
    """What is predicted and how it is scored."""

    def forward(self, batch: Batch, tokens: Tokens) -> Any:
        raise NotImplementedError

    def loss(self, prediction: Any, target: Any, mask: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError


@dataclass
class MaskedOutput:
    """Everything one masked forward pass produced, for figures and tests."""

    tokens: Tokens
    mask: Tensor
    prediction: Any
    target: Any
    losses: dict[str, Tensor]


class MaskedModel(nn.Module):
    """Tokenizer + masker + encoder + decoder + target, as an ordinary `nn.Module`.

    Pipelines with several objectives (contrastive + reconstruction) subclass it and override
    `predict`. Masks are drawn per sample when the batch carries `sample_id` (the engine always
    adds it): row i's mask comes from a generator seeded by (the step's seed, sample id i), so a
    sample's mask does not depend on batch composition, device or the number of processes. That
    is what makes one process with batch 2B train exactly like two processes with batch B.
    Maskers with a `mask_from_seeds(tokens, seeds)` method (random and tube masks) draw all rows
    at once from per-sample seeds; others are called once per row.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        masker: Masker,
        encoder: Encoder,
        decoder: Decoder,
        target: Target,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.masker = masker
        self.encoder = encoder
        self.decoder = decoder
        self.target = target

    @torch.compiler.disable  # host-side RNG work; tracing it would only cause graph breaks
    def draw_mask(self, tokens: Tokens, batch: Batch, generator: torch.Generator | None) -> Tensor:
        """Bool mask `[B, N]` on the tokens' device (True = hidden)."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        sample_ids = batch.get("sample_id")
        if sample_ids is None:
            mask = self.masker(tokens, generator)
        else:
            seeds = sample_seeds(sample_ids, generator)
            vectorised = getattr(self.masker, "mask_from_seeds", None)
            if vectorised is not None:
                mask = vectorised(tokens, torch.tensor(seeds, dtype=torch.int64))
                return mask.to(tokens.device, non_blocking=True)
            row_generator = torch.Generator()
            rows = []
            for row, seed in enumerate(seeds):
                row_generator.manual_seed(seed)
                rows.append(self.masker(tokens.rows(slice(row, row + 1)), row_generator))
            mask = torch.cat(rows)
        return mask.to(tokens.device, non_blocking=True)

    def predict(self, batch: Batch, generator: torch.Generator | None = None) -> MaskedOutput:
        tokens = self.tokenizer(batch)
        mask = self.draw_mask(tokens, batch, generator)
        latent = self.encoder(tokens, mask)
        prediction = self.decoder(latent, tokens, mask)
        target = self.target(batch, tokens)
        # Counted first and the dict built in one expression: under torch.compile (torch 2.11),
        # dynamo dropped entries of a losses dict that was mutated or built across a graph break
        # (MAE's boolean-indexed loss; `Tokens.count_tensor`). The conformance kit checks every
        # recipe's compiled losses against eager ones.
        num_tokens = tokens.count_tensor()
        losses = {**self.target.loss(prediction, target, mask), "num_tokens": num_tokens}
        return MaskedOutput(tokens, mask, prediction, target, losses)

    def forward(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        return self.predict(batch, generator).losses

    @torch.no_grad()
    def embed(self, batch: Batch) -> Tensor:
        """One feature vector per sample `[B, D]` from the unmasked encoder (probe, kNN)."""
        tokens = self.tokenizer(batch)
        return self.encoder.pool(self.encoder.forward_features(tokens), tokens)

    @torch.no_grad()
    def code_ids(self, batch: Batch) -> dict[str, CodeIds]:
        """The discrete codes a learned tokenizer or quantizer picks for `batch`, by name.

        The hook through which a plugin with its own codebook (a dVAE, a speech quantizer)
        reports it to the core's health monitors (`omnimask.monitors`), which log the code-usage
        perplexity and the share of the vocabulary used and warn when few codes carry the data.
        The default, no learned codes, returns `{}`. Called in eval mode on a fixed batch.
        """
        return {}


@dataclass
class CodeIds:
    """Code ids chosen for the real (non-padding) tokens of a batch, any shape, and the size of
    the vocabulary they index (one codebook: several codebooks are reported under their own
    names, or as one product vocabulary)."""

    ids: Tensor
    vocab_size: int
