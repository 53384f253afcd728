"""The plugin's manifest, read at discovery: it must import nothing heavy.

The core checks `core_api` against its own API version and `requires` with `find_spec` before
importing `recipes`' modules, which happens only when a recipe is built.
"""

from importlib.metadata import version

from omnimask.plugins import PluginSpec, RecipeEntry

spec = PluginSpec(
    name="timeseries",
    modality="multichannel 1-D time series",
    version=version("omnimask-timeseries"),
    core_api=">=0.2.1,<0.3",
    requires=("torch", "numpy"),
    recipes={
        "timeseries/mae": RecipeEntry(
            "omnimask_timeseries.recipe:TimeSeriesMAE",
            summary="masked autoencoder on multichannel series patches (PatchTST / Ti-MAE style)",
            presets=("demo", "proof", "paper"),
        ),
    },
)
