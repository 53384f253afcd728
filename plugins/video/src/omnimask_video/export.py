"""The `hf` export: the encoder's `VideoMAEModel`, written with `save_pretrained`.

`AutoModel.from_pretrained(folder)` rebuilds it with nothing from omnimask; its
`last_hidden_state` averaged over tubelets is `MaskedModel.embed`. Inputs are Hugging Face's
layout `[B, T, C, H, W]`, standardised with the recipe's mean/std (ImageNet's by default).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from omnimask import MaskedModel
from torch import Tensor

from omnimask_video.recipes import ClipConfig


def export_hf(model: MaskedModel, clip: ClipConfig, out_dir: Path) -> Path:
    """The `VideoMAEModel` and a `VideoMAEImageProcessor` with the recipe's preprocessing
    (short side to `clip.size`, centre crop, /255, the recipe's mean and std), so
    `AutoImageProcessor.from_pretrained(folder)` prepares frames as pretraining did."""
    from transformers import VideoMAEImageProcessor

    model.encoder.hf.save_pretrained(out_dir)
    processor = VideoMAEImageProcessor(
        size={"shortest_edge": clip.size},
        crop_size={"height": clip.size, "width": clip.size},
        image_mean=list(clip.mean),
        image_std=list(clip.std),
    )
    processor.save_pretrained(out_dir)
    return out_dir


def load_hf(path: Path) -> Callable[[dict], Tensor]:
    from transformers import AutoModel

    hf = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def embed(batch: dict) -> Tensor:
        pixel_values = batch["video"].transpose(1, 2)  # [B, C, T, H, W] -> [B, T, C, H, W]
        return hf(pixel_values=pixel_values).last_hidden_state.mean(1)

    return embed
