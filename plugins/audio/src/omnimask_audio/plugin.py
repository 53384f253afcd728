"""The plugin manifest: cheap to import (no torch), read by `omnimask.plugins.discover`."""

from omnimask.plugins import PluginSpec, RecipeEntry

spec = PluginSpec(
    name="audio",
    modality="audio",
    version="0.2.1",
    core_api=">=0.2.1,<0.3",
    requires=("torch", "torchaudio", "soundfile", "transformers", "numpy", "matplotlib"),
    recipes={
        "audio/w2v_bert": RecipeEntry(
            "omnimask_audio.recipes:W2VBertRecipe",
            summary=(
                "w2v-BERT: contrastive (wav2vec 2.0) + masked code prediction on log-mel fbanks"
            ),
            presets=("demo", "proof", "paper"),
        ),
    },
)
