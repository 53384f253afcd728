"""Typed recipe configs: command-line overrides, YAML round trip, and comparison on resume.

OmegaConf's structured configs do the type checking and conversion from the dataclasses; this
module only turns its exceptions into messages that name the key and what is wrong.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from omnimask.recipe import RecipeConfig

if TYPE_CHECKING:
    from omnimask.recipe import Recipe

C = TypeVar("C", bound=RecipeConfig)

#: keys that may differ when a run is resumed: they change how long or how visibly it runs,
#: not what it computes.
RESUMABLE_KEYS = frozenset(
    {
        "train.steps",
        "train.progress",
        "train.checkpoint_every",
        "train.keep_last",
        "train.log_every",
        "train.monitor_every",
        "train.monitor_samples",
        "data.num_workers",
    }
)


#: config sections that only evaluation reads (a recipe adds its own, `Recipe.eval_sections`):
#: they may differ on resume, and `omnimask eval` takes overrides of them.
EVAL_SECTIONS = ("finetune",)


def is_resumable(key: str, eval_sections: Sequence[str] = ()) -> bool:
    """Whether a config key may differ between a saved run and the config resuming it;
    `eval_sections` are the recipe's own evaluation-only sections (`Recipe.eval_sections`)."""
    sections = tuple(f"{name}." for name in (*EVAL_SECTIONS, *eval_sections))
    return key in RESUMABLE_KEYS or key.startswith(sections)


class ConfigError(ValueError):
    """A bad override or an unusable config file."""


def flatten(config: RecipeConfig | DictConfig) -> dict[str, Any]:
    """Dotted key -> leaf value, e.g. {"train.lr": 1.5e-4, ...}."""
    tree = OmegaConf.to_container(
        config if isinstance(config, DictConfig) else OmegaConf.structured(config)
    )
    flat: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        else:
            flat[prefix[:-1]] = node

    walk("", tree)
    return flat


def apply_overrides(config: C, overrides: list[str]) -> C:
    """Apply `key=value` overrides (dotted keys, YAML values) with type checking."""
    merged = OmegaConf.structured(config)
    known = list(flatten(merged))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (e.g. train.lr=1e-3)"
            )
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except ConfigKeyError:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r}{hint} (`omnimask recipes --show NAME` lists the keys)"
            ) from None
        except OmegaConfBaseException as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(f"bad value for {key!r}: {reason}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def to_yaml(config: RecipeConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def from_yaml(text: str, config_class: type[C], source: str = "config") -> C:
    """Parse a saved config into `config_class`; unknown or ill-typed keys are errors."""
    try:
        loaded = OmegaConf.create(text)
        merged = OmegaConf.merge(OmegaConf.structured(config_class), loaded)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        where = f" at {key!r}" if key else ""
        raise ConfigError(f"{source}{where}: {str(error).splitlines()[0]}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def load_config_file(path: Path) -> tuple[Recipe, RecipeConfig]:
    """The recipe a saved `config.yaml` names, and the config parsed into its config class."""
    from omnimask.plugins import get_recipe

    text = path.read_text()
    recipe_name = next(
        (line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("recipe:")),
        "",
    )
    if not recipe_name:
        raise ConfigError(f"{path}: no 'recipe:' entry")
    recipe = get_recipe(recipe_name)
    return recipe, from_yaml(text, recipe.config_class, source=str(path))


def differences(old: RecipeConfig, new: RecipeConfig) -> list[tuple[str, Any, Any]]:
    """(key, old, new) for every leaf that differs."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
