"""omnimask: masked-modeling self-supervised pretraining across modalities.

The core defines what every pipeline is made of (`Tokens`, `Tokenizer`, `Masker`, `Encoder`,
`Decoder`, `Target`, `MaskedModel`), the tensor helpers they share, the training `Engine`, plugin
discovery and the `omnimask` CLI. Modalities live in plugins found through entry points.
"""

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
from omnimask.plugins import PluginSpec
from omnimask.recipe import DataConfig, Recipe, RecipeConfig, TrainConfig
from omnimask.tokens import Tokens

__version__ = "0.2.0"
#: The plugin API version; plugins declare the range they support (`PluginSpec.core_api`).
API_VERSION = "0.2"

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
