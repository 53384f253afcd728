"""The medical plugin's manifest: cheap to import (no torch), read by omnimask's discovery."""

from omnimask.plugins import PluginSpec, RecipeEntry

spec = PluginSpec(
    name="medical",
    modality="3D CT volumes (NIfTI .nii / .nii.gz)",
    version="0.2.1",
    core_api=">=0.2.1,<0.3",
    requires=("torch", "nibabel", "matplotlib"),
    recipes={
        "medical/mambamim": RecipeEntry(
            "omnimask_medical.recipes:MambaMIMRecipe",
            summary=(
                "MambaMIM: hybrid MedNeXt-Mamba encoder, bottom-up 3D masks, TOKI, on CT volumes"
            ),
            presets=("demo", "proof", "paper"),
        ),
    },
)
