"""Pieces every text pipeline shares: ids -> `Tokens`, the Hugging Face encoder wrapper, and a
`MaskedModel` that draws the mask and the corrupted input ids together."""

from __future__ import annotations

import dataclasses

import torch
from omnimask import Encoder, MaskedModel, Tokens
from omnimask.engine.engine import ResumeError
from omnimask.model import Batch
from omnimask.seeding import sample_generators
from torch import Tensor, nn

from omnimask_text.masking import MLMMasker


class VocabularyMismatchError(ResumeError):
    """Data tokenized with one vocabulary fed to a model trained with another."""


def document_positions(sequence_ids: Tensor) -> Tensor:
    """Position of each token within its own document `[B, N]` (restarts in packed rows)."""
    length = sequence_ids.shape[1]
    index = torch.arange(length, device=sequence_ids.device).expand_as(sequence_ids)
    new_document = torch.ones_like(sequence_ids, dtype=torch.bool)
    new_document[:, 1:] = sequence_ids[:, 1:] != sequence_ids[:, :-1]
    return index - torch.where(new_document, index, 0).cummax(1).values


class TextTokenizer(nn.Module):
    """Batch of ids -> `Tokens(values=ids [B,N], positions [B,N,1], padding [B,N])`.

    Holds the vocabulary's digest as a buffer, so it is saved in every checkpoint: data tokenized
    with another vocabulary is refused with a clear message instead of training on garbage ids.
    """

    def __init__(
        self, pad_id: int, vocab_digest: int, vocab_source: str, id_to_token: list[str]
    ) -> None:
        super().__init__()
        self.pad_id = pad_id
        self.vocab_source = vocab_source
        self.id_to_token = id_to_token  # for figures
        self.register_buffer("vocab_digest", torch.tensor(vocab_digest, dtype=torch.long))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        """Refuse weights trained with another vocabulary before any shape mismatch is hit
        (this module is the first a `MaskedModel` loads)."""
        saved = state_dict.get(f"{prefix}vocab_digest")
        if saved is not None and int(saved) != int(self.vocab_digest):
            raise VocabularyMismatchError(
                f"the checkpoint was trained with another vocabulary (digest {int(saved)}) than "
                f"the current one, {self.vocab_source} (digest {int(self.vocab_digest)}); its "
                "ids would mean different tokens. Use the run's original vocab.path (or corpus, "
                "for a trained vocabulary), or start a new run."
            )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, batch: Batch) -> Tokens:
        data_digest = batch.get("vocab_digest")
        if data_digest is not None and bool((data_digest != self.vocab_digest).any()):
            raise VocabularyMismatchError(
                f"the data was tokenized with a vocabulary (digest {int(data_digest[0])}, from "
                f"{self.vocab_source}) that differs from the one this model/checkpoint was "
                f"trained with (digest {int(self.vocab_digest)}). Use the run's original "
                "vocab.path (or corpus, for a trained vocabulary), or start a new run."
            )
        sequence_ids = batch["sequence_ids"]
        padding = sequence_ids == 0
        ids = batch["input_ids"].masked_fill(padding, self.pad_id)
        positions = document_positions(sequence_ids).unsqueeze(-1)
        return Tokens(
            values=ids, positions=positions, padding=padding, extras={"sequence_ids": sequence_ids}
        )


def attention_mask(tokens: Tokens) -> Tensor:
    """2-D padding mask for one document per row; for packed rows a `[B, 1, N, N]` bool mask
    keeping attention inside each document (padding attends only to padding, so no row of the
    mask is empty, which would give NaN in SDPA)."""
    sequence_ids = tokens.extras["sequence_ids"]
    if int(sequence_ids.max()) <= 1:
        return (~tokens.padding).long()
    same = sequence_ids.unsqueeze(2) == sequence_ids.unsqueeze(1)
    return same.unsqueeze(1)


class HFEncoder(Encoder):
    """A Hugging Face base model (BertModel, ModernBertModel, ElectraModel) as an `Encoder`.

    Masked tokens are replaced in the input (BERT-style), so the encoder sees every position;
    `forward` reads the corrupted ids that `TextMaskedModel` put in `tokens.extras`.
    """

    def __init__(self, backbone: nn.Module, mask_id: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_id = mask_id

    def encode(self, ids: Tensor, tokens: Tokens) -> Tensor:
        output = self.backbone(
            input_ids=ids,
            attention_mask=attention_mask(tokens),
            position_ids=tokens.positions[..., 0],
        )
        return output.last_hidden_state

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        ids = tokens.extras.get("corrupted_ids")
        if ids is None:
            ids = tokens.values.masked_fill(mask, self.mask_id)
        return self.encode(ids, tokens)

    def forward_features(self, tokens: Tokens) -> Tensor:
        return self.encode(tokens.values, tokens)


class TextMaskedModel(MaskedModel):
    """`MaskedModel` whose masker also corrupts the input (80/10/10).

    The core's `draw_mask` only returns the bool mask; BERT needs the replacement ids from the
    same random draws. So this draws both per sample, with the core's per-sample seeding rule
    (seed mixed from the step's seed and the sample id), and hands the corrupted ids to the
    encoder through `tokens.extras["corrupted_ids"]`.
    """

    masker: MLMMasker

    @torch.compiler.disable
    def draw_corruption(
        self, tokens: Tokens, batch: Batch, generator: torch.Generator | None
    ) -> tuple[Tensor, ...]:
        """The masker's `corrupt` fields (selected mask, corrupted ids, ...), drawn per sample."""
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        sample_ids = batch.get("sample_id")
        if sample_ids is None:
            fields = self.masker.corrupt(tokens, generator)
        else:
            rows = [
                self.masker.corrupt(tokens.rows(slice(row, row + 1)), row_generator)
                for row, row_generator in enumerate(sample_generators(sample_ids, generator))
            ]
            fields = tuple(torch.cat(parts) for parts in zip(*rows))
        return tuple(field.to(tokens.device) for field in fields)

    def draw_mask(self, tokens: Tokens, batch: Batch, generator: torch.Generator | None) -> Tensor:
        return self.draw_corruption(tokens, batch, generator)[0]

    def corrupted_tokens(
        self, batch: Batch, generator: torch.Generator | None
    ) -> tuple[Tokens, Tensor]:
        tokens = self.tokenizer(batch)
        mask, ids = self.draw_corruption(tokens, batch, generator)[:2]
        extras = {**tokens.extras, "corrupted_ids": ids}
        return dataclasses.replace(tokens, extras=extras), mask
