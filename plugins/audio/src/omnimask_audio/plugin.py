"""The plugin manifest: cheap to import (no torch), read by `omnimask.plugins.discover`."""

from omnimask.plugins import PluginSpec

spec = PluginSpec(
    name="audio",
    modality="audio",
    version="0.2.0",
    core_api=">=0.2,<0.3",
    requires=("torch", "torchaudio", "soundfile", "transformers", "numpy", "matplotlib"),
    recipes={"audio/w2v_bert": "omnimask_audio.recipes:W2VBertRecipe"},
)
