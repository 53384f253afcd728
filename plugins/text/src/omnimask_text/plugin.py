"""The text plugin's manifest: cheap to import (no torch, no transformers)."""

from omnimask.plugins import PluginSpec, RecipeEntry

spec = PluginSpec(
    name="text",
    modality="text (plain-text folders, JSONL, Parquet) with WordPiece tokenization",
    version="0.2.3",
    core_api=">=0.2.1,<0.3",
    requires=("torch", "transformers", "tokenizers", "pyarrow", "matplotlib"),
    recipes={
        "text/mlm": RecipeEntry(
            "omnimask_text.recipes:MLMRecipe",
            summary=(
                "masked language modelling: BERT 80/10/10, whole-word, SpanBERT, n-gram, "
                "ERNIE-Gram explicit n-gram, MosaicBERT"
            ),
            presets=(
                "demo",
                "proof",
                "demo_modernbert",
                "paper",
                "whole_word",
                "spanbert",
                "ngram",
                "ernie_gram",
                "demo_ernie_gram",
                "mosaic",
            ),
        ),
        "text/electra": RecipeEntry(
            "omnimask_text.recipes:ElectraRecipe",
            summary=(
                "ELECTRA replaced-token detection: small generator + discriminator (weight 50)"
            ),
            presets=("demo", "proof", "paper"),
        ),
    },
)
