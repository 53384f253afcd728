"""Export to Hugging Face: a folder that `AutoModelForMaskedLM` (MLM) or `AutoModelForPreTraining`
(ELECTRA's discriminator; its generator in `generator/` for `AutoModelForMaskedLM`) loads, with the
WordPiece tokenizer beside it for `AutoTokenizer`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from omnimask.model import Batch, MaskedModel
from tokenizers import Tokenizer
from torch import Tensor, nn
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForPreTraining,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    PreTrainedTokenizerFast,
)

from omnimask_text.models.common import TextTokenizer, attention_mask
from omnimask_text.vocab import CLS, MASK, PAD, SEP, UNK


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, max_length: int) -> None:
    """The WordPiece tokenizer as a `PreTrainedTokenizerFast` folder. `model_max_length` is the
    model's position count, so `truncation=True` in transformers cuts there instead of passing
    a longer input on to fail in the position embeddings."""
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        model_max_length=max_length,
        unk_token=UNK,
        pad_token=PAD,
        cls_token=CLS,
        sep_token=SEP,
        mask_token=MASK,
    )
    fast.save_pretrained(out_dir)


def assemble_mlm(model: MaskedModel) -> nn.Module:
    """A fresh `*ForMaskedLM` holding our encoder's and head's weights."""
    backbone = model.encoder.backbone
    mlm = AutoModelForMaskedLM.from_config(backbone.config)
    state = {f"{mlm.base_model_prefix}.{k}": v for k, v in backbone.state_dict().items()}
    for name, part in model.decoder.parts.items():
        state |= {f"{name}.{k}": v for k, v in part.state_dict().items()}
    mlm.load_state_dict(state, strict=True)
    return mlm.eval()


def assemble_electra(model: MaskedModel) -> tuple[ElectraForPreTraining, ElectraForMaskedLM]:
    backbone = model.encoder.backbone
    discriminator = ElectraForPreTraining(backbone.config)
    state = {f"electra.{k}": v for k, v in backbone.state_dict().items()}
    detector = model.decoder.discriminator_predictions.state_dict()
    state |= {f"discriminator_predictions.{k}": v for k, v in detector.items()}
    discriminator.load_state_dict(state, strict=True)
    source = model.decoder.generator
    generator = ElectraForMaskedLM(source.config)
    generator.load_state_dict(source.state_dict(), strict=True)
    return discriminator.eval(), generator.eval()


def export_hf(
    model: MaskedModel, tokenizer: Tokenizer, out_dir: Path, electra: bool, max_length: int
) -> Path:
    if electra:
        discriminator, generator = assemble_electra(model)
        discriminator.save_pretrained(out_dir)
        generator.save_pretrained(out_dir / "generator")
        save_tokenizer(tokenizer, out_dir / "generator", max_length)
    else:
        assemble_mlm(model).save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir, max_length)
    return out_dir


def load_hf_embedder(path: Path, pad_id: int, electra: bool) -> Callable[[Batch], Tensor]:
    """`embed(batch) -> [B, D]` through the Auto class: mean of the last hidden states over real
    tokens, exactly what `MaskedModel.embed` computes."""
    auto = AutoModelForPreTraining if electra else AutoModelForMaskedLM
    hf_model = auto.from_pretrained(path).eval()
    to_tokens = TextTokenizer(pad_id, 0, str(path), [])

    @torch.no_grad()
    def embed(batch: Batch) -> Tensor:
        tokens = to_tokens({k: v for k, v in batch.items() if k != "vocab_digest"})
        hidden = hf_model.base_model(
            input_ids=tokens.values,
            attention_mask=attention_mask(tokens),
            position_ids=tokens.positions[..., 0],
        ).last_hidden_state
        keep = (~tokens.padding).unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    return embed
