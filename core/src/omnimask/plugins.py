"""Plugin discovery through the `omnimask.plugins` entry-point group.

Each entry point names a cheap module attribute: a `PluginSpec`. Discovery checks the core API
range and the required import names *before* anything heavy is imported; recipes are imported
only when built. A broken plugin is reported and skipped, never fatal, unless
`OMNIMASK_STRICT_PLUGINS=1` (for plugin developers).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

if TYPE_CHECKING:
    from omnimask.recipe import Recipe

ENTRY_POINT_GROUP = "omnimask.plugins"


class PluginError(RuntimeError):
    """A plugin could not be used (raised for every problem in strict mode)."""


class UnknownRecipeError(KeyError):
    """No discovered plugin provides the requested recipe."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class RecipeEntry:
    """A recipe as its plugin's spec declares it: where its `Recipe` class is, and what
    `omnimask recipes` prints without importing that class's module (and torch). The
    conformance kit checks `summary` and `presets` against the class."""

    target: str  # "module:attribute"
    summary: str = ""
    presets: tuple[str, ...] = ()


@dataclass(frozen=True)
class PluginSpec:
    """What a plugin declares about itself; building one must import nothing heavy.

    Attributes:
        name: plugin name, also the recipe prefix (`vision` for `vision/spark`).
        modality: what it pretrains on, in words.
        version: the plugin's own version.
        core_api: the core API versions it supports, a PEP 440 specifier (">=0.2,<0.3").
        requires: import names needed to build its recipes (checked with `find_spec`).
        recipes: recipe name -> a `RecipeEntry`, or just the "module:attribute" of its
            `Recipe` subclass (then `omnimask recipes` cannot list its presets without
            importing it).
    """

    name: str
    modality: str
    version: str
    core_api: str
    requires: tuple[str, ...] = ()
    recipes: dict[str, str | RecipeEntry] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that was found but cannot be used, and why."""

    entry_point: str
    reason: str


@dataclass(frozen=True)
class Discovery:
    plugins: dict[str, PluginSpec]
    problems: tuple[PluginProblem, ...]

    def recipe_names(self) -> list[str]:
        return sorted(name for spec in self.plugins.values() for name in spec.recipes)


def _strict() -> bool:
    return os.environ.get("OMNIMASK_STRICT_PLUGINS", "") not in ("", "0", "false", "False")


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def check_spec(spec: object, api_version: str) -> str | None:
    """Why `spec` cannot be used with this core, or None if it can."""
    if not isinstance(spec, PluginSpec):
        return f"entry point gave {type(spec).__name__}, not a PluginSpec"
    try:
        supported = SpecifierSet(spec.core_api)
    except InvalidSpecifier:
        return f"core_api {spec.core_api!r} is not a valid version specifier"
    if Version(api_version) not in supported:
        return f"needs omnimask core API {spec.core_api}, this core provides {api_version}"
    missing = [name for name in spec.requires if importlib.util.find_spec(name) is None]
    if missing:
        return f"missing dependency: {', '.join(missing)} (install the plugin with its extras)"
    wrong_prefix = [r for r in spec.recipes if not r.startswith(f"{spec.name}/")]
    if wrong_prefix:
        return f"recipe names must start with '{spec.name}/': {', '.join(wrong_prefix)}"
    return None


@cache
def discover() -> Discovery:
    """Load every plugin spec once; report, and skip, the ones that cannot be used."""
    from omnimask import API_VERSION

    plugins: dict[str, PluginSpec] = {}
    problems: list[PluginProblem] = []
    for entry_point in _entry_points():
        label = f"{entry_point.name} ({entry_point.value})"
        try:
            spec = entry_point.load()
        except Exception as error:  # a plugin's import may fail in any way; report it
            reason = f"import failed: {type(error).__name__}: {error}"
            if _strict():  # chained: the plugin developer sees the original traceback
                raise PluginError(f"plugin {label}: {reason}") from error
        else:
            reason = check_spec(spec, API_VERSION)
            if reason is None and spec.name in plugins:
                reason = f"plugin name {spec.name!r} is already taken"
        if reason is None:
            plugins[spec.name] = spec
            continue
        problems.append(PluginProblem(label, reason))
        if _strict():
            raise PluginError(f"plugin {label}: {reason}")
    return Discovery(plugins, tuple(problems))


def recipe_entry(spec: PluginSpec, name: str) -> RecipeEntry:
    """Recipe `name` of `spec` as a `RecipeEntry`, whichever form the spec gives it in."""
    entry = spec.recipes[name]
    return entry if isinstance(entry, RecipeEntry) else RecipeEntry(entry)


def get_recipe(name: str) -> Recipe:
    """Import and instantiate the recipe called `name` (`<plugin>/<method>`)."""
    discovery = discover()
    plugin = discovery.plugins.get(name.split("/", 1)[0])
    if plugin is None or name not in plugin.recipes:
        known = discovery.recipe_names()
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        listing = ", ".join(known) or "none (no plugin installed)"
        broken = [p.entry_point for p in discovery.problems]
        note = (
            f" Plugins that failed to load: {', '.join(broken)} (see `omnimask plugins`)."
            if broken
            else ""
        )
        raise UnknownRecipeError(f"unknown recipe {name!r}{hint} Known recipes: {listing}.{note}")
    module_name, _, attribute = recipe_entry(plugin, name).target.partition(":")
    try:
        recipe_class = getattr(importlib.import_module(module_name), attribute)
    except Exception as error:
        raise PluginError(
            f"recipe {name!r} of plugin {plugin.name!r} failed to import "
            f"({recipe_entry(plugin, name).target}): {type(error).__name__}: {error}"
        ) from error
    return recipe_class()
