"""Health monitors: is the encoder collapsing, are the learned codes still used?

A falling loss proves nothing: an encoder can map every input to the same vector, or a dVAE can
use one code, while its loss still falls. The engine therefore scores a fixed probe batch every
`train.monitor_every` steps with figures that collapse shows up in, and warns once when it does:

- RankMe (Garrido et al., "RankMe: Assessing the downstream performance of pretrained
  self-supervised representations by their rank", ICML 2023): the exponential of the entropy of
  the normalised singular values of the pooled embeddings, a smooth effective rank in
  [1, min(n, D)]. One direction for every sample gives 1.
- The mean per-dimension standard deviation of the L2-normalised embeddings, the collapse signal
  lightly logs (`lightly.utils.debug.std_of_l2_normalized`): about 1/sqrt(D) for well spread
  embeddings, 0 when all are the same vector.
- For every learned codebook a plugin reports through `MaskedModel.code_ids`: the perplexity of
  the code histogram (the number of equally used codes it is worth) and the share of the
  vocabulary used at all.

The figures are logged as they are; the embedding warning compares the spread with the run's
own start (see `STD_COLLAPSE_DROP`), the codebook warning with the vocabulary.

The three are small tensor functions written here: lightly would be a large dependency for one
line, and no maintained library ships RankMe.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from omnimask.model import CodeIds, MaskedModel

logger = logging.getLogger("omnimask")

#: The std of the normalised embeddings falling below this share of its value at the start
#: of the run says collapse. Relative, because the pooled embeddings of some healthy encoders
#: share a large common component at any time (a random or trained MambaMIM encoder's std is
#: about 1-5% of 1/sqrt(D)), while collapse is the spread vanishing as training goes on.
STD_COLLAPSE_DROP = 0.1
#: Code perplexity below this share of min(vocabulary, ids scored) says codebook collapse.
CODE_COLLAPSE_SHARE = 0.1


def rankme(embeddings: Tensor, eps: float = 1e-7) -> float:
    """Effective rank of `[n, D]` embeddings: exp(entropy(s / sum s)) of their singular values."""
    singular = torch.linalg.svdvals(embeddings.detach().double())
    if singular.sum() <= 0:
        return 1.0
    p = singular / singular.sum() + eps
    return float(torch.exp(-(p * p.log()).sum()))


def normalized_embedding_std(embeddings: Tensor) -> float:
    """Mean over dimensions of the std across samples of the L2-normalised `[n, D]` embeddings."""
    unit = F.normalize(embeddings.detach().double(), dim=1)
    return float(unit.std(dim=0).mean())


def code_perplexity(ids: Tensor, vocab_size: int) -> float:
    """exp(entropy) of the histogram of `ids` over `vocab_size` codes: 1 when one code is used,
    `vocab_size` when all are used equally."""
    counts = torch.bincount(ids.flatten().long(), minlength=vocab_size).double()
    p = counts / counts.sum().clamp_min(1)
    return float(torch.exp(-(p * p.clamp_min(1e-300).log()).sum()))


def codes_used(ids: Tensor, vocab_size: int) -> float:
    """Share of the `vocab_size` codes that `ids` uses at least once."""
    return len(torch.unique(ids.flatten())) / vocab_size


@dataclass
class HealthReport:
    """The figures of one probe pass, and the collapse they point at (empty when healthy)."""

    figures: dict[str, float]
    collapse: list[str] = field(default_factory=list)


def embedding_health(embeddings: Tensor, start_std: float | None = None) -> HealthReport:
    """Collapse figures of `[n, D]` embeddings. Rows with a non-finite value (a bad sample in the
    probe batch; the engine's loss guard deals with non-finite training) are left out.

    Collapse: every embedding the same (std 0), or the std fallen below `STD_COLLAPSE_DROP` of
    `start_std`, its value on the same probe batch before training."""
    embeddings = embeddings[torch.isfinite(embeddings).all(dim=1)]
    n, dim = embeddings.shape
    if n < 2:
        return HealthReport({})
    rank, std = rankme(embeddings), normalized_embedding_std(embeddings)
    report = HealthReport({"health/rankme": rank, "health/embedding_std": std})
    fell = start_std is not None and std < STD_COLLAPSE_DROP * start_std
    if std == 0.0 or fell:
        since = f"from {start_std:.2e} at the start " if start_std is not None else ""
        report.collapse.append(
            f"the encoder's embeddings look collapsed: the std of the L2-normalised embeddings "
            f"fell {since}to {std:.2e} (well spread: about {1 / math.sqrt(dim):.2e}); RankMe "
            f"{rank:.2f} of at most {min(n, dim)}"
        )
    return report


def code_health(name: str, codes: CodeIds) -> HealthReport:
    ids = codes.ids.detach().cpu()
    perplexity = code_perplexity(ids, codes.vocab_size)
    used = codes_used(ids, codes.vocab_size)
    report = HealthReport(
        {f"health/{name}_code_perplexity": perplexity, f"health/{name}_codes_used": used}
    )
    reachable = min(codes.vocab_size, ids.numel())
    if perplexity < CODE_COLLAPSE_SHARE * reachable:
        report.collapse.append(
            f"the {name} codebook looks collapsed: code perplexity {perplexity:.1f} of "
            f"{codes.vocab_size} codes ({used:.0%} of the codes used on {ids.numel()} tokens)"
        )
    return report


@torch.no_grad()
def probe_health(
    model: MaskedModel, batch: dict[str, Any], start_std: float | None = None
) -> HealthReport:
    """Score `model` on `batch` in eval mode, leaving its mode and every RNG as they were, so
    monitoring does not change the run it watches (resumed runs stay exact). `start_std`: the
    embedding std on the same batch before training (see `embedding_health`)."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            reports = [embedding_health(model.embed(batch).float(), start_std)]
            reports += [code_health(n, c) for n, c in model.code_ids(batch).items()]
    finally:
        model.train(was_training)
    return HealthReport(
        {k: v for r in reports for k, v in r.figures.items()},
        [line for r in reports for line in r.collapse],
    )


class CollapseWarnings:
    """Logs each kind of collapse once per run, with the step and the figure."""

    def __init__(self) -> None:
        self.warned: set[str] = set()

    def __call__(self, step: int, lines: Iterable[str]) -> list[str]:
        """Warn about the `lines` not warned before; returns them."""
        new = []
        for line in lines:
            kind = line.split(":", 1)[0]
            if kind not in self.warned:
                self.warned.add(kind)
                logger.warning("step %d: %s", step, line)
                new.append(line)
        return new
