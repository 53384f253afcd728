"""The video plugin's manifest: cheap to import (no torch, no PyAV)."""

from omnimask.plugins import PluginSpec

spec = PluginSpec(
    name="video",
    modality="video clips (MP4, WebM, AVI, MKV, MOV files; folders of frame images)",
    version="0.2.0",
    core_api=">=0.2,<0.3",
    requires=("torch", "av", "transformers", "timm", "matplotlib", "PIL"),
    recipes={"video/videomae": "omnimask_video.recipes:VideoMAERecipe"},
)
