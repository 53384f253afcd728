"""BERT-style masked language modelling on a Hugging Face `*ForMaskedLM`.

The `*ForMaskedLM` is built whole (so its weight tying and initialisation are Hugging Face's own)
and then split: its base model becomes the encoder, its MLM head the decoder. The head runs on
the masked positions only (MosaicBERT's and ModernBERT's "sparse prediction"): the vocabulary
projection is the largest matmul of a small BERT, and unmasked positions carry no loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from omnimask import LOSS_WEIGHT, Decoder, MaskedOutput, Target, Tokens
from omnimask.model import Batch
from torch import Tensor, nn

from omnimask_text.models.common import TextMaskedModel


class MLMHead(Decoder):
    """The `*ForMaskedLM` head modules, applied in order to the masked positions: `[M, V]`."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(parts)

    def logits(self, hidden: Tensor) -> Tensor:
        for part in self.parts.values():
            hidden = part(hidden)
        return hidden

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        return self.logits(latent[mask])


class TokenIdTarget(Target):
    """The original ids; cross-entropy on the selected positions."""

    def forward(self, batch: Batch, tokens: Tokens) -> Tensor:
        return tokens.values

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        labels = target[mask]
        loss = F.cross_entropy(prediction.float(), labels)
        accuracy = (prediction.argmax(-1) == labels).float().mean()
        # A mean over the batch's masked tokens, whose number varies per row: the count goes
        # with it, so processes and micro-batches are weighed by it (core README, "Losses and
        # the batch"), as Hugging Face's Trainer does with `num_items_in_batch`.
        count = torch.tensor(float(labels.numel()), device=loss.device)
        return {"loss": loss, "mlm_accuracy": accuracy.detach(), LOSS_WEIGHT: count}


class MLMModel(TextMaskedModel):
    def predict(self, batch: Batch, generator: torch.Generator | None = None) -> MaskedOutput:
        tokens, mask = self.corrupted_tokens(batch, generator)
        latent = self.encoder(tokens, mask)
        prediction = self.decoder(latent, tokens, mask)
        target = self.target(batch, tokens)
        num_tokens = tokens.count_tensor()
        losses = {**self.target.loss(prediction, target, mask), "num_tokens": num_tokens}
        return MaskedOutput(tokens, mask, prediction, target, losses)


def head_parts(mlm: nn.Module) -> dict[str, Any]:
    """The head modules of a `*ForMaskedLM`, by their attribute names (kept for export)."""
    if hasattr(mlm, "cls"):  # BertForMaskedLM
        return {"cls": mlm.cls}
    return {"head": mlm.head, "decoder": mlm.decoder}  # ModernBertForMaskedLM
