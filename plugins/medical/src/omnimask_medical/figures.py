"""Axial, coronal and sagittal slices of original | masked | reconstruction."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from omnimask import MaskedModel  # noqa: E402
from omnimask.patching import unpatchify  # noqa: E402

MAX_VOLUMES = 2
#: Masked cells are drawn in this colour: not a grey (its red, green and blue differ), so no
#: voxel of a CT or MR slice, drawn in greys, can take it. Drawn black, a masked cell looked
#: like air (0 after the window), and in grey like fat or soft tissue.
MASK_COLOUR = (1.0, 0.55, 0.0)


@torch.no_grad()
def reconstruct(model: MaskedModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(original, hidden, reconstruction) volumes `[B, S, S, S]`: the original and the
    reconstruction in [0, 1] units (the prediction de-normalised with each cell's own mean and
    std, visible cells shown as they were: what the model saw), and True where a voxel's cell
    was masked."""
    model.eval()
    output = model.predict(batch, torch.Generator().manual_seed(0))
    tokens, mask = output.tokens, output.mask
    cell = (model.tokenizer.cell,) * 3
    mean = tokens.values.mean(-1, keepdim=True)
    std = (tokens.values.var(-1, keepdim=True) + 1e-6).sqrt()
    predicted = output.prediction * std + mean
    hidden = mask.unsqueeze(-1).expand_as(tokens.values)
    as_volume = lambda patches: unpatchify(patches, cell, tokens.grid, 1)[:, 0]  # noqa: E731
    original = as_volume(tokens.values)
    reconstruction = as_volume(torch.where(hidden, predicted, tokens.values))
    return original, as_volume(hidden.float()) > 0.5, reconstruction


def grey_with_mask(image: torch.Tensor, hidden: torch.Tensor | None = None) -> np.ndarray:
    """An RGB image `[H, W, 3]` of a slice in [0, 1]: greys (clipped to [0, 1]), and
    `MASK_COLOUR` where `hidden`."""
    rgb = image.clamp(0, 1).cpu().numpy()[..., None].repeat(3, axis=-1)
    if hidden is not None:
        rgb[hidden.cpu().numpy()] = MASK_COLOUR
    return rgb


def draw_slices(model: MaskedModel, batch: dict, path: Path) -> Path:
    """Original | masked (the original with masked cells in `MASK_COLOUR`) | reconstruction,
    through the middle of each of the first `MAX_VOLUMES` volumes in three views, with a
    legend for the masked cells."""
    volumes = {k: v[:MAX_VOLUMES] for k, v in batch.items() if hasattr(v, "__getitem__")}
    original, hidden, reconstruction = reconstruct(model, volumes)
    count = original.shape[0]
    views = ("axial", "coronal", "sagittal")
    figure, axes = plt.subplots(
        3 * count, 3, figsize=(7.5, 7.5 * count), squeeze=False, constrained_layout=True
    )
    for index in range(count):
        for v, view in enumerate(views):
            row = axes[3 * index + v]
            panels = (
                grey_with_mask(_slice(original[index], view)),
                grey_with_mask(_slice(original[index], view), _slice(hidden[index], view)),
                grey_with_mask(_slice(reconstruction[index], view)),
            )
            for c, (title, panel) in enumerate(
                zip(("original", "masked", "reconstruction"), panels)
            ):
                row[c].imshow(panel.transpose(1, 0, 2), origin="lower", interpolation="nearest")
                row[c].set_xticks([])
                row[c].set_yticks([])
                if index == 0 and v == 0:
                    row[c].set_title(title)
            row[0].set_ylabel(f"volume {index}: {view}")
    figure.legend(
        handles=[Patch(color=MASK_COLOUR, label="masked cell (hidden from the encoder)")],
        loc="outside lower center",
    )
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
