"""`export --format torchgeo`: weights that `torchgeo.models.croma.CROMA` loads as its own.

Our encoder carries torchgeo's module names, so the export is the encoder's state dict with one
change: the patch embeddings' input columns are reordered from omnimask's patch layout
`(row, col, band)` to torchgeo's `(band, row, col)` (its `rearrange('b c (h i) (w j) -> b (h w)
(c i j)')`). torchgeo's `attn_bias` buffer is not written: it only encodes the image size, and
the loader rebuilds it for whatever size it is given.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from omnimask.export import ExportError
from omnimask.model import Batch
from safetensors.torch import load_file, save_file
from torch import Tensor

from omnimask_remote_sensing.config import CromaConfig
from omnimask_remote_sensing.models.croma import CromaModel, select_embedding

WEIGHTS = "croma_torchgeo.safetensors"
SETTINGS = "croma_torchgeo.json"
PATCH_EMBEDDINGS = {
    "s1_encoder.linear_input.weight": "s1_bands",
    "s2_encoder.linear_input.weight": "s2_bands",
}


def torchgeo_croma() -> ModuleType:
    """torchgeo's own `torchgeo/models/croma.py` module.

    `import torchgeo.models.croma` first runs `torchgeo.models.__init__`, which imports every
    model family torchgeo ships: about three times the cost of the CROMA module itself, which
    needs only torch, einops and torchvision (tens of CPU seconds on a small machine, paid by
    every export and test). So the file is executed on its own, unless torchgeo's package
    import has already happened, in which case that module is used.
    """
    if "torchgeo.models.croma" in sys.modules:
        return sys.modules["torchgeo.models.croma"]
    name = "omnimask_remote_sensing._torchgeo_croma"
    if name not in sys.modules:
        package = importlib.util.find_spec("torchgeo")
        if package is None or package.origin is None:
            raise ExportError("the torchgeo format needs torchgeo installed (pip install torchgeo)")
        source = Path(package.origin).parent / "models" / "croma.py"
        spec = importlib.util.spec_from_file_location(name, source)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        sys.modules[name] = module
    return sys.modules[name]


def check_torchgeo_compatible(config: CromaConfig) -> None:
    """torchgeo's CROMA fixes 16 heads, patch 8 and 2 + 12 bands; say which setting differs."""
    fixed = {
        "model.heads": (config.model.heads, 16),
        "model.patch_size": (config.model.patch_size, 8),
        "chips.s1_bands": (config.chips.s1_bands, 2),
        "chips.s2_bands": (config.chips.s2_bands, 12),
    }
    wrong = [
        f"{key}={value} (torchgeo needs {needed})"
        for key, (value, needed) in fixed.items()
        if value != needed
    ]
    if wrong:
        raise ExportError("torchgeo's CROMA cannot hold this model: " + ", ".join(wrong))


def _to_band_major(weight: Tensor, bands: int, patch: int) -> Tensor:
    """Patch-embedding columns `(i, j, c)` -> `(c, i, j)`."""
    width = weight.shape[0]
    return weight.reshape(width, patch, patch, bands).permute(0, 3, 1, 2).reshape(width, -1)


def torchgeo_state(model: CromaModel, config: CromaConfig) -> dict[str, Tensor]:
    """The encoder's weights under torchgeo's `CROMA.state_dict()` names and layouts."""
    state = {
        key: value.detach().cpu().clone().contiguous()
        for key, value in model.encoder.state_dict().items()
    }
    for key, bands in PATCH_EMBEDDINGS.items():
        state[key] = _to_band_major(
            state[key], getattr(config.chips, bands), config.model.patch_size
        ).contiguous()
    return state


def export_torchgeo(model: CromaModel, config: CromaConfig, out_dir: Path) -> Path:
    check_torchgeo_compatible(config)
    path = out_dir / WEIGHTS
    save_file(
        torchgeo_state(model, config), str(path), metadata={"format": "torchgeo.models.croma"}
    )
    settings = {
        "modalities": ["sar", "optical"],
        "encoder_dim": config.model.dim,
        "encoder_depth": config.model.depth,
        "num_heads": config.model.heads,
        "patch_size": config.model.patch_size,
        "image_size": config.chips.size,
        "embedding": config.model.embedding,
    }
    (out_dir / SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    return path


def load_torchgeo(path: Path) -> torch.nn.Module:
    """Build torchgeo's CROMA from an export folder and load the weights (only `attn_bias`,
    which torchgeo derives from the image size, may be absent)."""
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    settings = json.loads((folder / SETTINGS).read_text())
    settings.pop("embedding")
    model = torchgeo_croma().CROMA(**settings)
    result = model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=False)
    if result.unexpected_keys or set(result.missing_keys) != {"attn_bias"}:
        raise ExportError(
            f"{folder / WEIGHTS} does not fit torchgeo's CROMA: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    return model.eval()


def torchgeo_embedder(path: Path) -> Callable[[Batch], Tensor]:
    """`embed(batch) -> [B, D]` computed by torchgeo's CROMA, pooled like `CromaEncoder.pool`."""
    get_2dalibi = torchgeo_croma().get_2dalibi
    model = load_torchgeo(path)
    folder = Path(path).parent if Path(path).is_file() else Path(path)
    embedding = json.loads((folder / SETTINGS).read_text())["embedding"]

    @torch.no_grad()
    def embed(batch: Batch) -> Tensor:
        side = batch["s2"].shape[-1] // model.patch_size
        if model.attn_bias.shape[-1] != side * side:  # torchgeo's bias is built for one size
            model.attn_bias = get_2dalibi(model.num_heads, side * side).to(batch["s2"].device)
        out = model(x_sar=batch["s1"].float(), x_optical=batch["s2"].float())
        pooled = {"optical": out["optical_GAP"], "radar": out["sar_GAP"], "joint": out["joint_GAP"]}
        return select_embedding(pooled, embedding)

    return embed
