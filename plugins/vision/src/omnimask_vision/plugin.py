"""The vision plugin's manifest: cheap to import (no torch), read by omnimask's discovery."""

from omnimask.plugins import PluginSpec

spec = PluginSpec(
    name="vision",
    modality="images (JPEG/PNG/WebP folders, WebDataset tar shards)",
    version="0.2.0",
    core_api=">=0.2,<0.3",
    requires=("torch", "timm", "torchvision", "PIL", "sklearn", "matplotlib"),
    recipes={
        "vision/spark": "omnimask_vision.recipes:SparkRecipe",
        "vision/mae": "omnimask_vision.recipes:MAERecipe",
        "vision/simmim": "omnimask_vision.recipes:SimMIMRecipe",
    },
)
