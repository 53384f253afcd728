"""Axial, coronal and sagittal slices of original | masked | reconstruction."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omnimask import MaskedModel  # noqa: E402
from omnimask.patching import unpatchify  # noqa: E402

MAX_VOLUMES = 2


@torch.no_grad()
def reconstruct(model: MaskedModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(original, masked input, reconstruction) volumes `[B, S, S, S]` in [0, 1] units: the
    prediction is de-normalised with each cell's own mean and std, and visible cells are shown
    as they were (what the model saw)."""
    model.eval()
    output = model.predict(batch, torch.Generator().manual_seed(0))
    tokens, mask = output.tokens, output.mask
    cell = (model.tokenizer.cell,) * 3
    mean = tokens.values.mean(-1, keepdim=True)
    std = (tokens.values.var(-1, keepdim=True) + 1e-6).sqrt()
    predicted = output.prediction * std + mean
    hidden = mask.unsqueeze(-1)
    as_volume = lambda patches: unpatchify(patches, cell, tokens.grid, 1)[:, 0]  # noqa: E731
    original = as_volume(tokens.values)
    masked = as_volume(torch.where(hidden, torch.zeros_like(tokens.values), tokens.values))
    reconstruction = as_volume(torch.where(hidden, predicted, tokens.values))
    return original, masked, reconstruction


def draw_slices(model: MaskedModel, batch: dict, path: Path) -> Path:
    volumes = {k: v[:MAX_VOLUMES] for k, v in batch.items() if hasattr(v, "__getitem__")}
    columns = reconstruct(model, volumes)
    count = columns[0].shape[0]
    views = ("axial", "coronal", "sagittal")
    figure, axes = plt.subplots(
        3 * count, 3, figsize=(7.5, 7.5 * count), squeeze=False, constrained_layout=True
    )
    for index in range(count):
        for v, view in enumerate(views):
            row = axes[3 * index + v]
            for c, (title, volume) in enumerate(
                zip(("original", "masked", "reconstruction"), columns)
            ):
                image = _slice(volume[index], view)
                row[c].imshow(image.T.cpu().numpy(), cmap="gray", vmin=0, vmax=1, origin="lower")
                row[c].set_xticks([])
                row[c].set_yticks([])
                if index == 0 and v == 0:
                    row[c].set_title(title)
            row[0].set_ylabel(f"volume {index}: {view}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _slice(volume: torch.Tensor, view: str) -> torch.Tensor:
    """The middle slice of a RAS volume `[x, y, z]`: axial (x, y), coronal (x, z), sagittal
    (y, z)."""
    x, y, z = (n // 2 for n in volume.shape)
    return {"axial": volume[:, :, z], "coronal": volume[:, y, :], "sagittal": volume[x, :, :]}[view]
