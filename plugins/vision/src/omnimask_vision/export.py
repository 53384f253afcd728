"""The `timm` export: the encoder's timm model as weights that `timm.create_model` loads as is.

`model.safetensors` holds the state dict of the unmodified timm model (classifier head included,
untrained), `timm_config.json` the architecture name and the keyword arguments it was built with,
so `timm.create_model(name, pretrained=False, **kwargs).load_state_dict(...)` finds no missing
or unexpected key.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

WEIGHTS, CONFIG = "model.safetensors", "timm_config.json"


def export_timm(model: nn.Module, architecture: str, kwargs: dict, out_dir: Path) -> Path:
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS), metadata={"architecture": architecture})
    config = {"architecture": architecture, "kwargs": kwargs, "num_features": model.num_features}
    (out_dir / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out_dir / WEIGHTS


def load_timm_export(path: Path) -> nn.Module:
    """The exported model, rebuilt with timm alone and loaded strictly, in eval mode."""
    folder = path.parent if path.is_file() else path
    config = json.loads((folder / CONFIG).read_text())
    model = timm.create_model(config["architecture"], pretrained=False, **config["kwargs"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    return model.eval()


def timm_embedding(model: nn.Module, image: Tensor) -> Tensor:
    """`[B, D]` from a plain timm model: spatial mean of a CNN's last map, or the mean of a
    ViT's patch tokens; the same pooling as the plugin's encoders."""
    with torch.no_grad():
        features = model.forward_features(image)
    if features.dim() == 4:
        return features.flatten(2).mean(-1)
    return features[:, model.num_prefix_tokens :].mean(1)
