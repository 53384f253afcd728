"""The text plugin's manifest: cheap to import (no torch, no transformers)."""

from omnimask.plugins import PluginSpec

spec = PluginSpec(
    name="text",
    modality="text (plain-text folders, JSONL, Parquet) with WordPiece tokenization",
    version="0.2.0",
    core_api=">=0.2,<0.3",
    requires=("torch", "transformers", "tokenizers", "pyarrow", "matplotlib"),
    recipes={
        "text/mlm": "omnimask_text.recipes:MLMRecipe",
        "text/electra": "omnimask_text.recipes:ElectraRecipe",
    },
)
