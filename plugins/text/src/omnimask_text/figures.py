"""`omnimask visualize` for text: a PNG table of sample rows, their masked input and the top
predictions at the masked positions (MLM; an n-gram collapsed into one [MASK] shows as its words
joined by `_`), or the replaced tokens and the discriminator's
verdicts (ELECTRA)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import torch
from omnimask.model import Batch, MaskedModel
from torch import Tensor

#: tokens shown per sample: enough to read, few enough to fit the figure.
WINDOW = 40
WRAP = 70


def _window(mask_row: Tensor, real: int) -> range:
    """A WINDOW-token range of the row, starting a little before its first masked token."""
    masked = mask_row[:real].nonzero().flatten()
    first = int(masked[0]) if len(masked) else 0
    start = max(0, min(first - 5, real - WINDOW))
    return range(start, min(real, start + WINDOW))


def _join(pieces: list[str]) -> str:
    return textwrap.fill(" ".join(pieces), WRAP)


def _draw_table(
    rows: list[tuple[str, str, str]], headers: tuple[str, str, str], path: Path
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [max(c.count("\n") for c in row) + 2 for row in rows]
    figure = plt.figure(figsize=(18, 0.22 * sum(heights) + 1.0), dpi=100)
    axis = figure.add_axes((0, 0, 1, 1))
    axis.axis("off")
    total = sum(heights) + 2
    y = 1 - 1 / total
    for column, header in enumerate(headers):
        axis.text(0.01 + column / 3, y, header, weight="bold", family="monospace", va="top")
    for row, height in zip(rows, heights):
        y -= 1.2 / total
        for column, cell in enumerate(row):
            axis.text(0.01 + column / 3, y, cell, family="monospace", fontsize=7, va="top")
        y -= (height - 1) / total
    figure.savefig(path)
    plt.close(figure)
    return path


def label_names(model: MaskedModel) -> list[str]:
    """Names of the prediction classes: the vocabulary, then (explicit n-gram MLM) each lexicon
    n-gram as its words joined by `_` (WordPiece `##` pieces glued to their word)."""
    vocabulary = model.tokenizer.id_to_token
    table = getattr(model.decoder, "ngram_ids", None)
    if table is None:
        return vocabulary
    ngrams = []
    for row in table.tolist():
        pieces = [vocabulary[i] for i in row if i >= 0]
        ngrams.append("_".join(pieces).replace("_##", ""))
    return vocabulary + ngrams


@torch.no_grad()
def mlm_figure(model: MaskedModel, batch: Batch, path: Path) -> Path:
    output = model.predict(batch, torch.Generator().manual_seed(0))
    vocabulary, names = model.tokenizer.id_to_token, label_names(model)
    ids, mask = output.tokens.values.cpu(), output.mask.cpu()
    targets = output.target.cpu()
    corrupted = output.tokens.extras["corrupted_ids"].cpu()
    top = output.prediction.float().topk(3, dim=-1).indices.cpu()  # [M, 3], row-major over mask
    slot = torch.full(mask.shape, -1, dtype=torch.long)
    slot[mask] = torch.arange(int(mask.sum()))
    rows = []
    for row in range(ids.shape[0]):
        real = int((~output.tokens.padding[row]).sum())
        original, masked, predicted = [], [], []
        for i in _window(mask[row], real):
            token = names[targets[row, i]] if mask[row, i] else vocabulary[ids[row, i]]
            original.append(token)
            masked.append(f"[{vocabulary[corrupted[row, i]]}]" if mask[row, i] else token)
            if mask[row, i]:
                guesses = "/".join(names[t] for t in top[slot[row, i]].tolist())
                predicted.append(f"{token}->{guesses}")
        rows.append((_join(original), _join(masked), "\n".join(predicted[:12])))
    headers = ("original", "masked input ([...] = selected)", "target -> top-3 predictions")
    return _draw_table(rows, headers, path)


@torch.no_grad()
def electra_figure(model: MaskedModel, batch: Batch, path: Path) -> Path:
    output = model.predict(batch, torch.Generator().manual_seed(0))
    vocabulary = model.tokenizer.id_to_token
    ids = output.tokens.values.cpu()
    replaced_ids = output.tokens.extras["discriminator_ids"].cpu()
    replaced, verdict = output.target.cpu() > 0.5, output.prediction.cpu() > 0
    rows = []
    for row in range(ids.shape[0]):
        real = int((~output.tokens.padding[row]).sum())
        original, corrupted, detected = [], [], []
        for i in _window(output.mask[row].cpu(), real):
            original.append(vocabulary[ids[row, i]])
            token = vocabulary[replaced_ids[row, i]]
            corrupted.append(f"[{token}]" if replaced[row, i] else token)
            detected.append(f"<{token}>" if verdict[row, i] else token)
        rows.append((_join(original), _join(corrupted), _join(detected)))
    headers = ("original", "generator output ([...] = replaced)", "discriminator: <...> = replaced")
    return _draw_table(rows, headers, path)
