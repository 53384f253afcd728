"""ERNIE-Gram's explicitly n-gram masked language modelling on a Hugging Face `*ForMaskedLM`.

A selected n-gram enters the encoder as ONE [MASK] (its other tokens are dropped and the row is
compacted), and that position predicts the n-gram's identity. The classifier runs over the joint
space <tokens, n-grams> (ERNIE-Gram's W_N): its token half is the `*ForMaskedLM` head itself
(transform + the decoder tied to the input embeddings), so the exported `BertForMaskedLM` is
the trained one; the n-gram half is a table of n-gram output embeddings and biases fed by the
same transform, used only in pretraining. Positions keep their original values, so the gap
after a collapsed [MASK] tells the n-gram's length, as the per-token [MASK] queries of the
paper's comprehensive prediction also do; the comprehensive (fine-grained) stream and the
generator of the enhanced relation modelling are not part of this recipe.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from omnimask import LOSS_WEIGHT, MaskedOutput, Target, Tokens
from omnimask.model import Batch
from torch import Tensor, nn

from omnimask_text.lexicon import NgramLexicon
from omnimask_text.models.common import TextMaskedModel
from omnimask_text.models.mlm import MLMHead


class LexiconMismatchError(ValueError):
    """A checkpoint trained with another n-gram lexicon than the one in use."""


def ngram_table(lexicon: NgramLexicon) -> Tensor:
    """The lexicon as ids `[L, max_n]`, right-padded with -1 (saved with the model)."""
    table = torch.full((len(lexicon), max(lexicon.max_n, 1)), -1, dtype=torch.long)
    for k, ngram in enumerate(lexicon.ngrams):
        table[k, : len(ngram)] = torch.tensor(ngram)
    return table


def compact_rows(keep: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
    """Move the kept entries of every row to its front, in order, and cut all rows to the
    longest kept count. Each tensor is `[B, N, ...]`; entries past a row's count are garbage
    and must be marked by the caller (see `collapse_ngrams`)."""
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    length = int(keep.sum(1).max())
    out = []
    for tensor in tensors:
        index = order.view(*order.shape, *([1] * (tensor.ndim - 2))).expand_as(tensor)
        out.append(tensor.gather(1, index)[:, :length])
    return tuple(out)


def collapse_ngrams(
    tokens: Tokens, keep: Tensor, pad_id: int, **fields: Tensor
) -> tuple[Tokens, dict[str, Tensor]]:
    """Drop the tokens with `keep == False` from every row (rows are compacted and re-padded);
    `fields` (`[B, N]`) are compacted alongside. Dropped slots become padding: [PAD] ids,
    position 0, sequence id 0, so they neither attend nor are attended to."""
    sequence_ids = tokens.extras["sequence_ids"]
    names = list(fields)
    compacted = compact_rows(
        keep, tokens.values, tokens.positions, sequence_ids, keep, *(fields[n] for n in names)
    )
    values, positions, sequence_ids, kept = compacted[:4]
    padding = ~kept | (sequence_ids == 0)
    collapsed = Tokens(
        values=values.masked_fill(padding, pad_id),
        positions=positions.masked_fill(padding.unsqueeze(-1), 0),
        padding=padding,
        extras={"sequence_ids": sequence_ids.masked_fill(padding, 0)},
    )
    return collapsed, dict(zip(names, compacted[4:]))


class JointMLMHead(MLMHead):
    """The `*ForMaskedLM` head plus n-gram rows: logits `[M, V + L]` over <tokens, n-grams>."""

    def __init__(self, parts: dict[str, nn.Module], lexicon: NgramLexicon, hidden: int) -> None:
        super().__init__(parts)
        self.ngram_embeddings = nn.Parameter(torch.randn(len(lexicon), hidden) * 0.02)
        self.ngram_bias = nn.Parameter(torch.zeros(len(lexicon)))
        self.register_buffer("ngram_ids", ngram_table(lexicon))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Refuse weights trained with another lexicon: their n-gram rows mean other n-grams."""
        saved = state_dict.get(f"{prefix}ngram_ids")
        if saved is not None and not torch.equal(saved.cpu(), self.ngram_ids.cpu()):
            raise LexiconMismatchError(
                "the checkpoint was trained with another n-gram lexicon than the current "
                "mask.lexicon; use the run's original lexicon file or start a new run"
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def transform_and_projection(self) -> tuple[nn.Module, nn.Module]:
        """The head's hidden transform and its (tied) token projection."""
        if "cls" in self.parts:  # BertForMaskedLM: cls.predictions.{transform, decoder}
            predictions = self.parts["cls"].predictions
            return predictions.transform, predictions.decoder
        return self.parts["head"], self.parts["decoder"]  # ModernBertForMaskedLM

    def logits(self, hidden: Tensor) -> Tensor:
        transform, token_projection = self.transform_and_projection()
        features = transform(hidden)
        ngram_logits = F.linear(features, self.ngram_embeddings, self.ngram_bias)
        return torch.cat([token_projection(features), ngram_logits], dim=-1)


class JointLabelTarget(Target):
    """Joint labels (token id, or vocab size + lexicon index for a collapsed n-gram), stored by
    the model in `tokens.extras["joint_labels"]`; cross-entropy on the predicted positions."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size

    def forward(self, batch: Batch, tokens: Tokens) -> Tensor:
        return tokens.extras["joint_labels"]

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        labels = target[mask]
        loss = F.cross_entropy(prediction.float(), labels)
        correct = (prediction.argmax(-1) == labels).float()
        is_ngram = labels >= self.vocab_size
        count = torch.tensor(float(labels.numel()), device=loss.device)  # see mlm.MLMTarget
        metrics = {"loss": loss, "mlm_accuracy": correct.mean().detach(), LOSS_WEIGHT: count}
        metrics["ngram_share"] = is_ngram.float().mean().detach()
        if bool(is_ngram.any()):
            metrics["ngram_accuracy"] = correct[is_ngram].mean().detach()
        return metrics


class ExplicitNgramModel(TextMaskedModel):
    """Corrupt, collapse selected n-grams, encode the shorter rows, predict <tokens, n-grams>."""

    def predict(self, batch: Batch, generator: torch.Generator | None = None) -> MaskedOutput:
        tokens = self.tokenizer(batch)
        selected, corrupted, ngram_index, removed = self.draw_corruption(tokens, batch, generator)
        joint_labels = torch.where(
            ngram_index >= 0, self.target.vocab_size + ngram_index, tokens.values
        )
        collapsed, fields = collapse_ngrams(
            tokens,
            ~removed,
            self.tokenizer.pad_id,
            mask=selected,
            corrupted_ids=corrupted,
            joint_labels=joint_labels,
        )
        mask = fields.pop("mask") & ~collapsed.padding
        extras = {**collapsed.extras, **fields}
        collapsed = dataclasses.replace(collapsed, extras=extras)
        latent = self.encoder(collapsed, mask)
        prediction = self.decoder(latent, collapsed, mask)
        target = self.target(batch, collapsed)
        num_tokens = tokens.count_tensor()
        losses = {**self.target.loss(prediction, target, mask), "num_tokens": num_tokens}
        return MaskedOutput(collapsed, mask, prediction, target, losses)
