"""Plugin specs for discovery tests: one good, and one of each kind of broken."""

from omnimask.plugins import PluginSpec, RecipeEntry

good = PluginSpec(
    name="good",
    modality="test",
    version="1.0",
    core_api=">=0.2,<0.3",
    recipes={"good/mim": "toy_recipe:ToyRecipe"},
)
incompatible = PluginSpec(name="future", modality="test", version="9.0", core_api=">=2.0")
missing_dependency = PluginSpec(
    name="needy", modality="test", version="1.0", core_api=">=0.2", requires=("no_such_module_xyz",)
)
not_a_spec = {"name": "dict"}

toy = PluginSpec(
    name="toy",
    modality="test vectors",
    version="0.0.1",
    core_api=">=0.2,<0.3",
    requires=("torch",),
    recipes={"toy/mim": RecipeEntry("toy_recipe:ToyRecipe", summary="", presets=("demo",))},
)

half_broken = PluginSpec(
    name="half",
    modality="test",
    version="1.0",
    core_api=">=0.2,<0.3",
    recipes={"half/mim": "broken_plugin:Recipe"},  # the module's import fails
)
