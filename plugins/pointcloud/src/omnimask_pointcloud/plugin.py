"""The point-cloud plugin's manifest: cheap to import (no torch, no open3d)."""

from omnimask.plugins import PluginSpec

spec = PluginSpec(
    name="pointcloud",
    modality="3D point clouds (PLY, PCD, XYZ, NPY/NPZ; OFF/OBJ/STL meshes sampled to points)",
    version="0.2.0",
    core_api=">=0.2,<0.3",
    requires=("torch", "open3d", "fpsample", "scipy", "matplotlib", "timm"),
    recipes={
        "pointcloud/point_mae": "omnimask_pointcloud.recipes:PointMAERecipe",
        "pointcloud/point_bert_dvae": "omnimask_pointcloud.recipes:PointBERTDVAERecipe",
        "pointcloud/point_bert": "omnimask_pointcloud.recipes:PointBERTRecipe",
    },
)
