"""The video plugin's manifest: cheap to import (no torch, no PyAV)."""

from omnimask.plugins import PluginSpec, RecipeEntry

spec = PluginSpec(
    name="video",
    modality="video clips (MP4, WebM, AVI, MKV, MOV files; folders of frame images)",
    version="0.2.2",
    core_api=">=0.2.1,<0.3",
    requires=("torch", "av", "transformers", "timm", "matplotlib", "PIL"),
    recipes={
        "video/videomae": RecipeEntry(
            "omnimask_video.recipes:VideoMAERecipe",
            summary=(
                "VideoMAE: 2x16x16 tubelets, 90% tube masking, visible-only ViT, per-tubelet "
                "normalised MSE"
            ),
            presets=("demo", "proof", "paper"),
        ),
    },
)
