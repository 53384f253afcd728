"""Exporting a run's encoder: safetensors always, plugin formats besides.

The safetensors export holds the tokenizer's and encoder's weights (what `forward_features`
needs; a learned tokenizer such as a patch embedding has weights too) next to the run's
`config.yaml`, so `load_safetensors_export` rebuilds the model from nothing but that folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from omnimask.config import load_config_file, to_yaml
from omnimask.model import MaskedModel
from omnimask.recipe import Recipe, RecipeConfig

EXPORTED_PARTS = ("tokenizer.", "encoder.")


class ExportError(ValueError):
    """An export that cannot be made or read."""


def encoder_state(model: MaskedModel) -> dict:
    """The tokenizer + encoder part of the state dict, contiguous and unshared (safetensors)."""
    return {
        key: value.detach().cpu().contiguous().clone()
        for key, value in model.state_dict().items()
        if key.startswith(EXPORTED_PARTS)
    }


def export_model(
    recipe: Recipe, model: MaskedModel, config: RecipeConfig, fmt: str, out_dir: Path
) -> Path:
    """Write `model`'s encoder in `fmt` under `out_dir`; returns the written path."""
    formats = ("safetensors", *recipe.export_formats)
    if fmt not in formats:
        raise ExportError(
            f"recipe {recipe.name!r} cannot export {fmt!r}; formats: {', '.join(formats)}"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    if fmt != "safetensors":
        return recipe.export(model, config, fmt, out_dir)
    path = out_dir / "encoder.safetensors"
    save_file(encoder_state(model), str(path), metadata={"recipe": recipe.name})
    (out_dir / "config.yaml").write_text(to_yaml(config))
    return path


def load_safetensors_export(path: Path) -> tuple[Recipe, RecipeConfig, MaskedModel]:
    """Rebuild the model of a safetensors export; its tokenizer and encoder weights are loaded
    strictly (every exported key used, every tokenizer/encoder key present)."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    weights, config_path = folder / "encoder.safetensors", folder / "config.yaml"
    for needed in (weights, config_path):
        if not needed.exists():
            raise ExportError(f"{folder} is not a safetensors export: {needed.name} is missing")
    recipe, config = load_config_file(config_path)
    model = recipe.build_model(config)
    state = load_file(str(weights))
    expected = set(encoder_state(model))
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ExportError(
            f"{weights} does not match recipe {recipe.name!r}: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model.load_state_dict(state, strict=False)
    return recipe, config, model.eval()


def export_run(run_dir: Path, fmt: str, out_dir: Path | None = None) -> Path:
    from omnimask.runs import load_run

    run = load_run(run_dir)
    target = out_dir or run.run_dir / "exports" / fmt
    if target.exists() and any(target.iterdir()):
        backup = target.with_name(f"{target.name}.previous")
        shutil.rmtree(backup, ignore_errors=True)
        target.rename(backup)  # never overwrite an earlier export in place
    return export_model(run.recipe, run.model, run.config, fmt, target)
