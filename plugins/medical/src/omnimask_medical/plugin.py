"""The medical plugin's manifest: cheap to import (no torch), read by omnimask's discovery."""

from omnimask.plugins import PluginSpec

spec = PluginSpec(
    name="medical",
    modality="3D CT volumes (NIfTI .nii / .nii.gz)",
    version="0.2.0",
    core_api=">=0.2,<0.3",
    requires=("torch", "nibabel", "matplotlib"),
    recipes={"medical/mambamim": "omnimask_medical.recipes:MambaMIMRecipe"},
)
