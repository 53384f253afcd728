"""omnimask: masked-modeling self-supervised pretraining across modalities.

The core defines what every pipeline is made of (`Tokens`, `Tokenizer`, `Masker`, `Encoder`,
`Decoder`, `Target`, `MaskedModel`), the tensor helpers they share, the training `Engine`, plugin
discovery and the `omnimask` CLI. Modalities live in plugins found through entry points.

The names below that need torch are imported when first used (PEP 562), so that a plugin's
manifest (`from omnimask.plugins import PluginSpec`) and the CLI's fast commands (`--help`,
`plugins`, `recipes`) start without importing torch, which alone takes seconds.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from omnimask.plugins import PluginSpec

if TYPE_CHECKING:
    from omnimask.model import (
        LOSS_WEIGHT,
        CodeIds,
        Decoder,
        Encoder,
        MaskedModel,
        MaskedOutput,
        Masker,
        Target,
        Tokenizer,
    )
    from omnimask.recipe import DataConfig, Recipe, RecipeConfig, TrainConfig
    from omnimask.tokens import Tokens

__version__ = "0.2.3"
#: The plugin API version; plugins declare the range they support (`PluginSpec.core_api`).
API_VERSION = "0.2.3"

#: public name -> the module that defines it, imported on first use.
_LAZY = {
    **dict.fromkeys(
        (
            "LOSS_WEIGHT",
            "CodeIds",
            "Decoder",
            "Encoder",
            "MaskedModel",
            "MaskedOutput",
            "Masker",
            "Target",
            "Tokenizer",
        ),
        "omnimask.model",
    ),
    **dict.fromkeys(("DataConfig", "Recipe", "RecipeConfig", "TrainConfig"), "omnimask.recipe"),
    "Tokens": "omnimask.tokens",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'omnimask' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "API_VERSION",
    "LOSS_WEIGHT",
    "CodeIds",
    "DataConfig",
    "Decoder",
    "Encoder",
    "MaskedModel",
    "MaskedOutput",
    "Masker",
    "PluginSpec",
    "Recipe",
    "RecipeConfig",
    "Target",
    "Tokenizer",
    "Tokens",
    "TrainConfig",
    "__version__",
]
