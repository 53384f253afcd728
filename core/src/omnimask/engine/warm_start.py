"""`train.init_from`: a new run starts from another run's weights.

For continued pretraining (more steps, other data, another objective on the same encoder) and
for recipes that start one stage from another (ELECTRA's discriminator from a BERT MLM run: the
two encoders share their architecture and parameter names). The model is still built by its
recipe, so `omnimask eval`'s random-init side stays the architecture at its initialisation;
only training starts elsewhere.

What is copied: every tensor whose name and shape both models have. The encoder must be
complete (every one of its tensors found), or the run is refused: a half-initialised encoder
would silently train from a mix. Other parts (decoders, heads, targets) are copied where they
match and otherwise keep their initialisation, which is logged. Applied to a fresh run only; a
resumed run continues from its own checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from omnimask.errors import ConfigError

logger = logging.getLogger("omnimask")

#: the model's part that must be copied whole
ENCODER_PREFIX = "encoder."


def source_state(source: Path) -> dict[str, torch.Tensor]:
    """Every tensor of `source`'s newest readable checkpoint, by name (tied tensors under each
    of their names: the run's model is rebuilt by its recipe, and its `state_dict` taken)."""
    from omnimask.runs import RunError, load_run

    try:
        return load_run(source).model.state_dict()
    except RunError as error:
        raise ConfigError(f"train.init_from: {error}") from None


def init_from_run(model: torch.nn.Module, source: Path) -> None:
    """Copy `source`'s weights into `model` (module docstring); `ConfigError` naming the first
    encoder tensor that is missing or shaped differently."""
    theirs = source_state(source)
    ours = model.state_dict()
    copied = {k: v for k, v in theirs.items() if k in ours and v.shape == ours[k].shape}
    for key in (k for k in ours if k.startswith(ENCODER_PREFIX) and k not in copied):
        found = (
            f"shaped {tuple(theirs[key].shape)} there, {tuple(ours[key].shape)} here"
            if key in theirs
            else "absent there"
        )
        raise ConfigError(
            f"train.init_from {source}: its encoder does not fit this one: {key} is {found}"
        )
    model.load_state_dict(copied, strict=False)
    left = sorted({".".join(k.split(".")[:2]) for k in ours if k not in copied})
    logger.info(
        "initialised %d of %d tensors from %s%s",
        len(copied),
        len(ours),
        source,
        f" (tensors left at their initialisation, in: {', '.join(left)})" if left else "",
    )
