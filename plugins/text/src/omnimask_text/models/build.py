"""Hugging Face configs and models from the recipe config and the vocabulary."""

from __future__ import annotations

from dataclasses import dataclass

from tokenizers import Tokenizer
from transformers import BertConfig, ModernBertConfig, PretrainedConfig

from omnimask_text.config import ModelConfig
from omnimask_text.vocab import CLS, MASK, PAD, SEP, SPECIAL_TOKENS, UNK

ARCHITECTURES = ("bert", "modernbert")


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    unk: int
    cls: int
    sep: int
    mask: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialIds:
        ids = {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}
        return cls(ids[PAD], ids[UNK], ids[CLS], ids[SEP], ids[MASK])

    def all(self) -> list[int]:
        return [self.pad, self.unk, self.cls, self.sep, self.mask]


def mlm_config(model: ModelConfig, vocab_size: int, special: SpecialIds) -> PretrainedConfig:
    """The `*ForMaskedLM` config. SDPA attention: it takes the block-diagonal masks of packed
    rows as they are. ModernBERT gets global attention in every layer, because a packed row's
    4-D mask replaces its sliding-window masks (rows are short; the window would not bite)."""
    if model.arch == "bert":
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=model.hidden,
            num_hidden_layers=model.layers,
            num_attention_heads=model.heads,
            intermediate_size=model.intermediate,
            hidden_dropout_prob=model.dropout,
            attention_probs_dropout_prob=model.dropout,
            max_position_embeddings=model.max_positions,
            pad_token_id=special.pad,
            attn_implementation="sdpa",
        )
    if model.arch == "modernbert":
        return ModernBertConfig(
            vocab_size=vocab_size,
            hidden_size=model.hidden,
            num_hidden_layers=model.layers,
            num_attention_heads=model.heads,
            intermediate_size=model.intermediate,
            max_position_embeddings=model.max_positions,
            attention_dropout=model.dropout,
            mlp_dropout=model.dropout,
            embedding_dropout=model.dropout,
            layer_types=["full_attention"] * model.layers,
            pad_token_id=special.pad,
            bos_token_id=special.cls,
            eos_token_id=special.sep,
            cls_token_id=special.cls,
            sep_token_id=special.sep,
            attn_implementation="sdpa",
        )
    raise ValueError(f"model.arch must be one of {ARCHITECTURES}, got {model.arch!r}")


def build_mlm(model: ModelConfig, vocab_size: int, special: SpecialIds):  # noqa: ANN201
    """A freshly initialised `BertForMaskedLM` / `ModernBertForMaskedLM`."""
    from transformers import AutoModelForMaskedLM

    return AutoModelForMaskedLM.from_config(mlm_config(model, vocab_size, special))
