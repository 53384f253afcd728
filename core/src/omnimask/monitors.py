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

#: RankMe below 1 + this share of its largest possible value, min(n, D), says collapse (1 is
#: one direction for every sample).
RANK_COLLAPSE_SHARE = 0.02
#: Normalised-embedding std below this share of its healthy 1/sqrt(D) says collapse.
STD_COLLAPSE_SHARE = 0.05
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


def embedding_health(embeddings: Tensor) -> HealthReport:
    """Collapse figures of `[n, D]` embeddings. Rows with a non-finite value (a bad sample in the
    probe batch; the engine's loss guard deals with non-finite training) are left out."""
    embeddings = embeddings[torch.isfinite(embeddings).all(dim=1)]
    n, dim = embeddings.shape
    if n < 2:
        return HealthReport({})
    rank, std = rankme(embeddings), normalized_embedding_std(embeddings)
    healthy_std = 1 / math.sqrt(dim)
    report = HealthReport({"health/rankme": rank, "health/embedding_std": std})
    low_rank = rank < 1 + RANK_COLLAPSE_SHARE * min(n, dim)
    if low_rank and std < STD_COLLAPSE_SHARE * healthy_std:
        report.collapse.append(
            f"the encoder's embeddings look collapsed: RankMe {rank:.2f} of at most {min(n, dim)}, "
            f"std of the L2-normalised embeddings {std:.2e} (well spread: about {healthy_std:.2e})"
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
def probe_health(model: MaskedModel, batch: dict[str, Any]) -> HealthReport:
    """Score `model` on `batch` in eval mode, leaving its mode and every RNG as they were, so
    monitoring does not change the run it watches (resumed runs stay exact)."""
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            reports = [embedding_health(model.embed(batch).float())]
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
