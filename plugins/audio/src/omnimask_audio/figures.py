"""The w2v-BERT figure: for each clip, its log-mel spectrogram with the masked spans shaded, and
below it the quantizer's code ids per frame with the MLM module's predictions at masked frames."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from omnimask_audio.models.w2v_bert import W2VBert  # noqa: E402

#: input (10 ms) frames per subsampled (40 ms) frame.
SUBSAMPLING = 4


def draw_w2v_bert(model: W2VBert, batch: dict, path: Path, clips: int = 2) -> Path:
    output = model.predict(batch, torch.Generator().manual_seed(0))
    mask = output.mask.cpu()
    codes = output.target.codes[..., 0].cpu()  # first codebook
    predicted = output.prediction["code_logits"][:, 0].argmax(-1).cpu()
    real = (~output.tokens.padding).sum(1).cpu()
    rows = min(clips, len(mask))
    figure, axes = plt.subplots(
        2 * rows, 1, figsize=(10, 4.2 * rows), squeeze=False, height_ratios=[3, 1.4] * rows
    )
    offset = 0  # position of the clip's masked frames among all M masked frames
    for row in range(rows):
        spectrogram_axis, codes_axis = axes[2 * row, 0], axes[2 * row + 1, 0]
        frames = int(batch["lengths"][row])
        features = batch["features"][row, :frames].float().cpu().T
        spectrogram_axis.imshow(features, origin="lower", aspect="auto", cmap="magma")
        hidden = mask[row, : real[row]]
        for frame in torch.nonzero(hidden).flatten().tolist():
            start = frame * SUBSAMPLING
            spectrogram_axis.axvspan(start, start + SUBSAMPLING, color="cyan", alpha=0.25, lw=0)
        spectrogram_axis.set_title(
            f"clip {row}: log-mel filterbank (80 bins), masked spans shaded "
            f"({int(hidden.sum())}/{int(real[row])} frames hidden)"
        )
        spectrogram_axis.set_ylabel("mel bin")
        steps = torch.arange(int(real[row]))
        codes_axis.scatter(steps, codes[row, : real[row]], s=8, c="grey", label="quantizer code")
        masked_steps = torch.nonzero(hidden).flatten()
        guesses = predicted[offset : offset + len(masked_steps)]
        offset += len(masked_steps)
        right = guesses == codes[row, masked_steps]
        codes_axis.scatter(
            masked_steps,
            guesses,
            s=18,
            marker="x",
            c=["green" if r else "red" for r in right],
            label="MLM prediction (green = right)",
        )
        codes_axis.set_xlim(-0.5, float(real[row]) - 0.5)
        codes_axis.set_ylabel("code id")
        codes_axis.set_xlabel("frame (40 ms)")
        codes_axis.legend(loc="upper right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
