"""Typed recipe configs: command-line overrides, YAML round trip, and comparison on resume.

OmegaConf's structured configs do the type checking and conversion from the dataclasses; this
module only turns its exceptions into messages that name the key and what is wrong.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from omnimask.data import BAD_SAMPLE_POLICIES
from omnimask.errors import ConfigError
from omnimask.recipe import OPTIMIZERS, RecipeConfig

if TYPE_CHECKING:
    from omnimask.recipe import Recipe

C = TypeVar("C", bound=RecipeConfig)

#: keys that may differ when a run is resumed: they change how long or how visibly it runs,
#: not what it computes.
RESUMABLE_KEYS = frozenset(
    {
        "train.steps",
        "train.init_from",  # read at step 0 only
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


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value >= low), f"at least {low:g}"


def _in_range(low: float, high: float, closed: bool = False) -> tuple[Callable[[Any], bool], str]:
    if closed:
        return (lambda value: low <= value <= high), f"in [{low:g}, {high:g}]"
    return (lambda value: low <= value < high), f"in [{low:g}, {high:g})"


def _one_of(*choices: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda value: value in choices), f"one of {', '.join(choices)}"


_POSITIVE = ((lambda value: value > 0), "greater than 0")
#: dotted key -> (test, what the value must be) for the core's sections: the types are OmegaConf's
#: to check, the ranges ours, so that a zero or negative count fails when the config is built
#: instead of as a ZeroDivisionError (or an empty run) steps later.
CORE_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "train.steps": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.grad_accum": _at_least(1),
    "train.optimizer": _one_of(*OPTIMIZERS),
    "train.lr": _POSITIVE,
    "train.lr_scale_batch": _at_least(0),
    "train.betas.0": _in_range(0, 1),
    "train.betas.1": _in_range(0, 1),
    "train.weight_decay": _at_least(0),
    "train.warmup_steps": _at_least(0),
    "train.min_lr_ratio": _in_range(0, 1, closed=True),
    "train.clip_grad": _at_least(0),
    "train.ema_decay": _in_range(0, 1),
    "train.strategy": _one_of("ddp", "fsdp"),
    "train.mixed_precision": _one_of("bf16", "no"),
    "train.checkpoint_every": _at_least(1),
    "train.keep_last": _at_least(1),
    "train.log_every": _at_least(1),
    "train.max_nonfinite": _at_least(1),
    "train.monitor_every": _at_least(0),
    "train.monitor_samples": _at_least(2),
    "data.on_bad_sample": _one_of(*BAD_SAMPLE_POLICIES),
    "data.num_workers": _at_least(0),
    "data.bucket_batches": _at_least(0),
    "finetune.steps": _at_least(1),
    "finetune.batch_size": _at_least(1),
    "finetune.lr": _POSITIVE,
    "finetune.weight_decay": _at_least(0),
    "finetune.warmup_steps": _at_least(0),
    "finetune.layer_decay": ((lambda value: 0 < value <= 1), "in (0, 1]"),
    "finetune.label_smoothing": _in_range(0, 1),
    "finetune.drop_path": _in_range(0, 1),
    "finetune.clip_grad": _at_least(0),
}


def check_ranges(config: RecipeConfig) -> None:
    """Raise `ConfigError` naming the first core setting out of its range or choices."""
    flat = flatten(config)
    for index, beta in enumerate(flat.pop("train.betas", ())):
        flat[f"train.betas.{index}"] = beta
    for key, (test, wanted) in CORE_CHECKS.items():
        if key in flat and not test(flat[key]):
            raise ConfigError(f"{key}={flat[key]!r} is out of range: it must be {wanted}")


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


#: how OmegaConf interpolations (`${oc.env:HOME}`) start: refused in overrides and saved configs,
#: so no value of a run comes from the environment or a resolver.
INTERPOLATION = "${"


def yaml_problem(error: yaml.YAMLError) -> str:
    """The first line of a YAML error, with where it is when PyYAML knows."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}; plain values only (no YAML tags)"


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
        if INTERPOLATION in value:
            raise ConfigError(
                f"override {item!r}: interpolations ({INTERPOLATION}...}}) are not resolved in "
                "command-line values; write the value itself"
            )
        try:
            merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([item]))
        except yaml.YAMLError as error:  # a YAML tag such as !!python/object
            raise ConfigError(f"bad value for {key!r}: {yaml_problem(error)}") from None
        except ConfigKeyError:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown config key {key!r}{hint} (`omnimask recipes --show NAME` lists the keys)"
            ) from None
        except OmegaConfBaseException as error:
            reason = str(error).splitlines()[0]
            raise ConfigError(f"bad value for {key!r}: {reason}") from None
    config = OmegaConf.to_object(merged)
    check_ranges(config)  # type: ignore[arg-type]
    return config  # type: ignore[return-value]


def to_yaml(config: RecipeConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def from_yaml(text: str, config_class: type[C], source: str = "config") -> C:
    """Parse a saved config into `config_class`; unknown or ill-typed keys are errors."""
    if INTERPOLATION in text:
        line = next(i for i, row in enumerate(text.splitlines(), 1) if INTERPOLATION in row)
        raise ConfigError(
            f"{source}:{line}: holds an interpolation ({INTERPOLATION}...}}); saved configs hold "
            "plain values"
        )
    try:
        loaded = OmegaConf.create(text)
        merged = OmegaConf.merge(OmegaConf.structured(config_class), loaded)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: {yaml_problem(error)}") from None
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
