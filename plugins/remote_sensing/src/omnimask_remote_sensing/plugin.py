"""The remote-sensing plugin's manifest: cheap to import (no torch, no rasterio)."""

from omnimask.plugins import PluginSpec, RecipeEntry

spec = PluginSpec(
    name="remote_sensing",
    modality="co-registered Sentinel-1 (SAR) and Sentinel-2 (optical) GeoTIFF scenes",
    version="0.2.2",
    core_api=">=0.2.1,<0.3",
    requires=("torch", "rasterio", "numpy", "matplotlib", "timm"),
    recipes={
        "remote_sensing/croma": RecipeEntry(
            "omnimask_remote_sensing.recipes:CromaRecipe",
            summary=(
                "CROMA: contrastive radar-optical masked autoencoder (Sentinel-1 + Sentinel-2)"
            ),
            presets=("demo", "proof", "paper"),
        ),
    },
)
