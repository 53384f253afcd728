"""The point-cloud plugin's manifest: cheap to import (no torch, no open3d)."""

from omnimask.plugins import PluginSpec, RecipeEntry

spec = PluginSpec(
    name="pointcloud",
    modality="3D point clouds (PLY, PCD, XYZ, NPY/NPZ; OFF/OBJ/STL meshes sampled to points)",
    version="0.2.2",
    core_api=">=0.2.1,<0.3",
    requires=("torch", "open3d", "fpsample", "scipy", "matplotlib", "timm"),
    recipes={
        "pointcloud/point_mae": RecipeEntry(
            "omnimask_pointcloud.recipes:PointMAERecipe",
            summary=(
                "Point-MAE: 60% random patch masking, visible-only encoder, Chamfer reconstruction"
            ),
            presets=("demo", "proof", "paper"),
        ),
        "pointcloud/point_bert_dvae": RecipeEntry(
            "omnimask_pointcloud.recipes:PointBERTDVAERecipe",
            summary=(
                "Point-BERT stage 1: dVAE point tokenizer (Gumbel-softmax, Chamfer + ramped "
                "KL of each cloud's mean code distribution to uniform)"
            ),
            presets=("demo", "paper"),
        ),
        "pointcloud/point_bert": RecipeEntry(
            "omnimask_pointcloud.recipes:PointBERTRecipe",
            summary=(
                "Point-BERT stage 2: block-masked point modelling predicting frozen dVAE codes"
            ),
            presets=("demo", "proof", "paper"),
        ),
    },
)
