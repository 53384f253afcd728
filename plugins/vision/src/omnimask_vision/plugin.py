"""The vision plugin's manifest: cheap to import (no torch), read by omnimask's discovery."""

from omnimask.plugins import PluginSpec, RecipeEntry

spec = PluginSpec(
    name="vision",
    modality="images (JPEG/PNG/WebP folders, WebDataset tar shards)",
    version="0.2.2",
    core_api=">=0.2.1,<0.3",
    requires=("torch", "timm", "torchvision", "PIL", "sklearn", "matplotlib"),
    recipes={
        "vision/spark": RecipeEntry(
            "omnimask_vision.recipes:SparkRecipe",
            summary="SparK: sparse masked modelling on unmodified timm CNNs (ResNet, ConvNeXt)",
            presets=("demo", "paper", "proof"),
        ),
        "vision/mae": RecipeEntry(
            "omnimask_vision.recipes:MAERecipe",
            summary=(
                "MAE: ViT encoder on visible patches only, transformer decoder, normalised pixels"
            ),
            presets=(
                "demo",
                "paper",
                "demo_hpm",
                "hpm",
                "demo_color_noise",
                "color_noise",
                "proof",
            ),
        ),
        "vision/simmim": RecipeEntry(
            "omnimask_vision.recipes:SimMIMRecipe",
            summary="SimMIM: ViT with a mask token, linear pixel head, L1 on masked pixels",
            presets=("demo", "paper", "proof"),
        ),
    },
)
