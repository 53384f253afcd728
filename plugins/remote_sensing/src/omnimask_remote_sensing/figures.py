"""`omnimask visualize`: S2 true colour (`chips.rgb_bands`) and S1 false colour (VV/VH, or grey /
the first three bands for other layouts), original | masked | reconstruction, for a few chips,
as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omnimask.model import Batch
from omnimask.patching import unpatchify
from torch import Tensor

from omnimask_remote_sensing.models.croma import CromaModel

HIDDEN_GREY = 0.5


def _denormalise(prediction: Tensor, optical: Tensor, radar: Tensor) -> tuple[Tensor, Tensor]:
    """Undo the per-patch standardisation of the target (computed over both sensors' values)."""
    joint = torch.cat([optical, radar], dim=-1)
    mean = joint.mean(-1, keepdim=True)
    std = (joint.var(-1, keepdim=True) + 1e-6).sqrt()
    restored = prediction * std + mean
    return restored[..., : optical.shape[-1]], restored[..., optical.shape[-1] :]


def _stretch(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` scaled to [0, 1] by the reference's 2-98 percentiles per channel."""
    low = np.percentile(reference, 2, axis=(0, 1))
    high = np.percentile(reference, 98, axis=(0, 1))
    return np.clip((image - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)


def _false_colour(s1: np.ndarray) -> np.ndarray:
    """`[C, H, W]` radar -> `[H, W, 3]`. Two bands (VV, VH): R = VV, G = VH, B = VV - VH (a
    common SAR composite); one band: grey; three or more: the first three."""
    if len(s1) == 1:
        return np.repeat(s1[0][..., None], 3, axis=-1)
    if len(s1) == 2:
        return np.stack([s1[0], s1[1], s1[0] - s1[1]], axis=-1)
    return s1[:3].transpose(1, 2, 0)


def draw(
    model: CromaModel, batch: Batch, path: Path, rgb_bands: tuple[int, ...], rows: int = 4
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = model.predict(batch, torch.Generator().manual_seed(0))
    tokens, mask = output.tokens, output.mask
    optical, radar = tokens.extras["optical"], tokens.extras["radar"]
    predicted_optical, predicted_radar = _denormalise(
        torch.cat([output.prediction.optical, output.prediction.radar], dim=-1), optical, radar
    )
    hidden = mask.unsqueeze(-1)
    patch = (model.tokenizer.patch_size,) * 2
    grid = tokens.grid

    def images(patches: Tensor, channels: int) -> dict[str, np.ndarray]:
        return {
            "original": unpatchify(patches, patch, grid, channels).cpu().numpy(),
            "masked": unpatchify(patches.masked_fill(hidden, float("nan")), patch, grid, channels)
            .cpu()
            .numpy(),
        }

    s2 = images(optical, optical.shape[-1] // (patch[0] * patch[1]))
    s1 = images(radar, radar.shape[-1] // (patch[0] * patch[1]))
    s2["reconstruction"] = (
        unpatchify(
            torch.where(hidden, predicted_optical, optical), patch, grid, s2["original"].shape[1]
        )
        .cpu()
        .numpy()
    )
    s1["reconstruction"] = (
        unpatchify(
            torch.where(hidden, predicted_radar, radar), patch, grid, s1["original"].shape[1]
        )
        .cpu()
        .numpy()
    )

    count = min(rows, mask.shape[0])
    figure, axes = plt.subplots(count, 6, figsize=(12, 2.1 * count), squeeze=False)
    for row in range(count):
        reference_rgb = s2["original"][row][list(rgb_bands)].transpose(1, 2, 0)
        reference_sar = _false_colour(s1["original"][row])
        for column, kind in enumerate(("original", "masked", "reconstruction")):
            rgb = _stretch(s2[kind][row][list(rgb_bands)].transpose(1, 2, 0), reference_rgb)
            sar = _stretch(_false_colour(s1[kind][row]), reference_sar)
            sar_name = "S1 VV/VH" if s1[kind].shape[1] == 2 else "S1"
            for offset, (image, sensor) in enumerate(((rgb, "S2 RGB"), (sar, sar_name))):
                axis = axes[row][column + 3 * offset]
                axis.imshow(np.where(np.isnan(image), HIDDEN_GREY, image))
                axis.set_axis_off()
                if row == 0:
                    axis.set_title(f"{sensor} {kind}", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
