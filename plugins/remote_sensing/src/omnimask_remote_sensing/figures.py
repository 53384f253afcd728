"""`omnimask visualize`: S2 true colour (`chips.rgb_bands`) and S1 false colour (VV/VH, or grey /
the first three bands for other layouts), original | masked | reconstruction, for a few chips,
as one PNG. Hidden patches are grey; nodata pixels (the batch's `valid` is False) are magenta in
every panel, since the data set fills them with the band mean, which would pass for data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from omnimask.model import Batch
from omnimask.patching import unpatchify
from torch import Tensor

from omnimask_remote_sensing.models.croma import CromaModel, joint_weights, patch_moments

HIDDEN_GREY = (0.5, 0.5, 0.5)
LEGEND_INCHES = 0.3  # below the panels
NODATA_MAGENTA = (1.0, 0.0, 1.0)  # data reach it only where R and B clip high and G low


def _denormalise(
    prediction: Tensor, optical: Tensor, radar: Tensor, valid: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Undo the per-patch standardisation of the target (over both sensors' valid values)."""
    joint = torch.cat([optical, radar], dim=-1)
    mean, std = patch_moments(joint, joint_weights(valid, optical, radar))
    restored = prediction * std + mean
    return restored[..., : optical.shape[-1]], restored[..., optical.shape[-1] :]


def _stretch(image: np.ndarray, reference: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` scaled to [0, 1] by the 2-98 percentiles per channel of the reference's
    valid pixels (the band-mean fill of nodata would pull them in)."""
    pixels = reference[valid] if valid.any() else reference.reshape(-1, 3)
    low = np.percentile(pixels, 2, axis=0)
    high = np.percentile(pixels, 98, axis=0)
    return np.clip((image - low) / np.maximum(high - low, 1e-6), 0.0, 1.0)


def _paint(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` with hidden pixels (NaN) grey and nodata pixels magenta."""
    shown = np.where(np.isnan(image), HIDDEN_GREY, image)
    return np.where(valid[..., None], shown, NODATA_MAGENTA)


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
    from matplotlib.patches import Patch

    output = model.predict(batch, torch.Generator().manual_seed(0))
    tokens, mask = output.tokens, output.mask
    optical, radar = tokens.extras["optical"], tokens.extras["radar"]
    predicted_optical, predicted_radar = _denormalise(
        torch.cat([output.prediction.optical, output.prediction.radar], dim=-1),
        optical,
        radar,
        tokens.extras.get("valid"),
    )
    valid = batch.get("valid")
    if valid is None:
        valid = torch.ones(mask.shape[0], *batch["s2"].shape[-2:], dtype=torch.bool)
    valid_pixels = valid.cpu().numpy()
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
    figure, axes = plt.subplots(count, 6, figsize=(12, 2.1 * count + LEGEND_INCHES), squeeze=False)
    for row in range(count):
        valid_row = valid_pixels[row]
        reference_rgb = s2["original"][row][list(rgb_bands)].transpose(1, 2, 0)
        reference_sar = _false_colour(s1["original"][row])
        for column, kind in enumerate(("original", "masked", "reconstruction")):
            rgb = s2[kind][row][list(rgb_bands)].transpose(1, 2, 0)
            rgb = _stretch(rgb, reference_rgb, valid_row)
            sar = _stretch(_false_colour(s1[kind][row]), reference_sar, valid_row)
            sar_name = "S1 VV/VH" if s1[kind].shape[1] == 2 else "S1"
            for offset, (image, sensor) in enumerate(((rgb, "S2 RGB"), (sar, sar_name))):
                axis = axes[row][column + 3 * offset]
                axis.imshow(_paint(image, valid_row))
                axis.set_axis_off()
                if row == 0:
                    axis.set_title(f"{sensor} {kind}", fontsize=8)
    legend = [
        Patch(color=HIDDEN_GREY, label="hidden patch"),
        Patch(color=NODATA_MAGENTA, label="nodata (not in the loss)"),
    ]
    figure.legend(handles=legend, loc="lower center", ncol=2, fontsize=8, frameon=False)
    figure.tight_layout(rect=(0.0, LEGEND_INCHES / figure.get_figheight(), 1.0, 1.0))
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
