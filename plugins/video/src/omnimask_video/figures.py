"""`omnimask visualize` for video: frame strips of original | masked | reconstruction.

Predictions live in per-tubelet normalised pixel space; as in MAE's figures they are taken back
to pixels with each hidden tubelet's own mean and standard deviation (which the model never
sees), and the visible tubelets are pasted from the original.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from omnimask import MaskedModel  # noqa: E402
from omnimask.gather import mask_to_indices  # noqa: E402
from omnimask.patching import unpatchify  # noqa: E402
from torch import Tensor  # noqa: E402

MAX_SAMPLES = 2
EPS = 1e-6  # as in `omnimask.patching.per_patch_normalize`


def denormalize(prediction: Tensor, pixels: Tensor, norm_pix: bool, per_channel: bool) -> Tensor:
    """Predictions `[M, P, C]` back to pixels with the statistics of the originals `[M, P, C]`."""
    if not norm_pix:
        return prediction
    dims = (-2,) if per_channel else (-2, -1)
    mean = pixels.mean(dim=dims, keepdim=True)
    std = (pixels.var(dim=dims, keepdim=True) + EPS).sqrt()
    return prediction * std + mean


@torch.no_grad()
def draw_reconstruction(model: MaskedModel, batch: dict, path: Path) -> Path:
    output = model.predict(batch, torch.Generator().manual_seed(0))
    target, tokenizer, tokens = model.target, model.tokenizer, output.tokens
    pixels = target.pixels(tokens).float().cpu()  # [B, N, P, C] in [0, 1]
    channels = pixels.shape[-1]
    _, hidden = mask_to_indices(output.mask.cpu())
    prediction = output.prediction.float().cpu().unflatten(-1, (-1, channels))
    rows = min(MAX_SAMPLES, pixels.shape[0])
    strips = []
    for b in range(rows):
        masked, rebuilt = pixels[b].clone(), pixels[b].clone()
        masked[hidden[b]] = 0.5
        rebuilt[hidden[b]] = denormalize(
            prediction[b], pixels[b, hidden[b]], target.norm_pix, target.per_channel
        )
        for name, tubelets in (
            ("original", pixels[b]),
            ("masked", masked),
            ("reconstruction", rebuilt),
        ):
            video = unpatchify(tubelets.flatten(1)[None], tokenizer.tubelet, tokens.grid, channels)[
                0
            ]
            strips.append((f"{name} {b}", video.clamp(0, 1).permute(1, 2, 3, 0).numpy()))
    frames = strips[0][1].shape[0]
    # One image per row (frames side by side, 1-pixel gaps): far cheaper than an axis per frame.
    figure, axes = plt.subplots(len(strips), 1, figsize=(1.0 * frames, 1.1 * len(strips)))
    for axis, (name, video) in zip(axes, strips):
        gap = np.ones((video.shape[1], 1, 3), dtype=video.dtype)
        axis.imshow(np.concatenate([part for frame in video for part in (frame, gap)][:-1], axis=1))
        axis.set_xticks([(t + 0.5) * (video.shape[2] + 1) for t in range(frames)])
        axis.set_xticklabels([f"t={t}" for t in range(frames)], fontsize=6)
        axis.set_yticks([])
        axis.set_ylabel(name, fontsize=7)
    hidden_share = float(output.mask[0].float().mean())
    figure.suptitle(f"VideoMAE tube masking ({hidden_share:.0%} of tubelets hidden)", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
