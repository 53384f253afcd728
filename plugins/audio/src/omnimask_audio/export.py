"""Hugging Face export: the Conformer stack as a `Wav2Vec2BertModel` folder that
`transformers.AutoModel.from_pretrained` reads, plus the convolutional subsampler it expects in
front (its `input_features` are subsampled filterbank frames, not raw filterbanks)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from omnimask.export import ExportError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformers import AutoModel, Wav2Vec2BertConfig

from omnimask_audio.models.w2v_bert import ConvSubsampling, W2VBert, attention_mask

SUBSAMPLING_FILE = "subsampling.safetensors"


def export_hf(model: W2VBert, out_dir: Path) -> Path:
    """Write `config.json` + `model.safetensors` (Hugging Face) and `subsampling.safetensors`.

    The exported config has SpecAugment off (`mask_time_prob=0`): the pretraining config holds
    our span masking's figures (0.065 x 10 = 0.65 in Hugging Face's terms), and a user who
    fine-tunes the export would otherwise mask 65% of the frames without asking for it."""
    model.encoder.model.save_pretrained(out_dir)
    config = Wav2Vec2BertConfig.from_pretrained(out_dir)
    config.mask_time_prob = 0.0
    config.save_pretrained(out_dir)
    subsampler = model.tokenizer
    state = {k: v.detach().cpu().contiguous() for k, v in subsampler.state_dict().items()}
    metadata = {"num_mel_bins": str(subsampler.num_mel_bins), "channels": str(subsampler.channels)}
    save_file(state, str(out_dir / SUBSAMPLING_FILE), metadata=metadata)
    return out_dir


def load_subsampler(folder: Path) -> ConvSubsampling:
    path = folder / SUBSAMPLING_FILE
    if not path.exists():
        raise ExportError(f"{folder} is not an audio/w2v_bert hf export: {path.name} is missing")
    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    subsampler = ConvSubsampling(int(metadata["num_mel_bins"]), int(metadata["channels"]))
    subsampler.load_state_dict(load_file(str(path)))
    return subsampler.eval()


def load_hf(path: Path) -> Callable[[dict], Tensor]:
    """`embed(batch) -> [B, D]` through `AutoModel.from_pretrained`: the mean of the last hidden
    state over real frames, as `MaskedModel.embed` pools it."""
    folder = Path(path)
    subsampler = load_subsampler(folder)
    conformer = AutoModel.from_pretrained(folder).eval()

    @torch.no_grad()
    def embed(batch: dict) -> Tensor:
        tokens = subsampler(batch)
        hidden = conformer(tokens.values, attention_mask=attention_mask(tokens)).last_hidden_state
        keep = (~tokens.padding).unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(1) / keep.sum(1).clamp_min(1.0)

    return embed
