"""Original | masked | reconstruction grids for image recipes (matplotlib, Agg, PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omnimask import MaskedModel  # noqa: E402
from omnimask.patching import unpatchify  # noqa: E402
from torch import Tensor  # noqa: E402

from omnimask_vision.data import denormalize  # noqa: E402

MAX_ROWS = 4
GREY = 0.5


def reconstructed_patches(prediction: Tensor, patches: Tensor, per_patch: bool) -> Tensor:
    """A prediction back in pixel space: a per-patch normalised prediction takes the mean and
    spread of the true patch (as the MAE figures do), a raw-pixel prediction is used as is."""
    if not per_patch:
        return prediction
    mean = patches.mean(-1, keepdim=True)
    std = (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    return prediction * std + mean


def draw_reconstructions(model: MaskedModel, batch: dict, path: Path, patch: int) -> Path:
    """One row per image (up to four): the original, its visible patches on grey, and the
    visible patches completed with the model's prediction of the masked ones."""
    output = model.predict(batch, torch.Generator().manual_seed(0))
    tokens, mask = output.tokens, output.mask.cpu()
    patches = tokens.values.detach().float().cpu()
    # HPM's decoder also scores the hidden patches (`HPMPrediction`); the figure shows pixels.
    prediction = getattr(output.prediction, "pixels", output.prediction).detach().float().cpu()
    if prediction.shape[1] != patches.shape[1]:  # the hidden patches only (MAE's decoder)
        prediction = patches.masked_scatter(mask.unsqueeze(-1), prediction)
    predicted = reconstructed_patches(
        prediction, patches, getattr(model.target, "per_patch", False)
    )
    hidden = mask.unsqueeze(-1)
    grid = tokens.grid
    size = (patch, patch)

    def image(values: Tensor) -> Tensor:
        return denormalize(unpatchify(values, size, grid, 3)).permute(0, 2, 3, 1).numpy()

    originals = image(patches)
    grey = (GREY - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    masked = image(torch.where(hidden, grey.repeat(patch * patch), patches))
    rebuilt = image(torch.where(hidden, predicted, patches))
    rows = min(MAX_ROWS, len(originals))
    figure, axes = plt.subplots(rows, 3, figsize=(6.6, 2.2 * rows), squeeze=False)
    for row in range(rows):
        hidden_count = int(mask[row].sum())
        panels = [
            ("original", originals[row]),
            (f"masked ({hidden_count}/{mask.shape[1]})", masked[row]),
            ("reconstruction", rebuilt[row]),
        ]
        for axis, (title, picture) in zip(axes[row], panels):
            axis.imshow(picture)
            axis.set_axis_off()
            if row == 0:
                axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
