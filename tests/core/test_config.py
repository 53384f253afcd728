"""Typed overrides and config files: clear errors that name the key and the problem."""

import pytest
from omnimask.config import ConfigError, apply_overrides, differences, from_yaml, to_yaml
from toy_recipe import ToyRecipe


@pytest.fixture
def config():
    return ToyRecipe().config("demo")


def test_overrides_are_typed(config) -> None:
    updated = apply_overrides(
        config, ["train.lr=3e-3", "train.betas=[0.8,0.9]", "model.width=5", "data.path=/d"]
    )
    assert updated.train.lr == 3e-3 and isinstance(updated.train.lr, float)
    assert updated.train.betas == (0.8, 0.9)
    assert updated.model.width == 5
    assert updated.data.path == "/d"
    assert config.model.width == 16  # the input config is not modified


def test_unknown_key_suggests_close_matches(config) -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'train.lrr'; did you mean train.lr"):
        apply_overrides(config, ["train.lrr=1"])


def test_wrong_type_names_the_key(config) -> None:
    with pytest.raises(ConfigError, match=r"bad value for 'train.steps': Value 'many'"):
        apply_overrides(config, ["train.steps=many"])


def test_override_without_equals_sign(config) -> None:
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides(config, ["train.steps"])


def test_yaml_round_trip_and_differences(config) -> None:
    again = from_yaml(to_yaml(config), type(config))
    assert again == config
    changed = apply_overrides(config, ["model.width=8"])
    assert differences(config, changed) == [("model.width", 16, 8)]


def test_bad_config_file_names_the_source(config) -> None:
    with pytest.raises(ConfigError, match=r"run/config.yaml at 'train.steps': Value 'lots'"):
        from_yaml(
            to_yaml(config).replace("steps: 12", "steps: lots"), type(config), "run/config.yaml"
        )


def test_interpolations_in_overrides_are_refused_not_resolved(config, monkeypatch) -> None:
    monkeypatch.setenv("OMNIMASK_TEST_SECRET", "/from/the/environment")
    with pytest.raises(ConfigError, match=r"interpolations .* are not resolved"):
        apply_overrides(config, ["data.path=${oc.env:OMNIMASK_TEST_SECRET}"])


def test_yaml_tags_are_one_line_errors(config) -> None:
    with pytest.raises(ConfigError, match=r"bad value for 'data.path'.*no YAML tags") as raised:
        apply_overrides(config, ["data.path=!!python/object/apply:os.system ['true']"])
    assert "\n" not in str(raised.value)
    text = to_yaml(config).replace("seed: 0", "seed: !!python/object/apply:os.getpid []")
    with pytest.raises(ConfigError, match=r"run/config.yaml: .*no YAML tags") as raised:
        from_yaml(text, type(config), "run/config.yaml")
    assert "\n" not in str(raised.value)


def test_saved_config_with_an_interpolation_names_the_line(config) -> None:
    text = to_yaml(config).replace("seed: 0", "seed: ${oc.env:HOME}")
    line = text.splitlines().index("  seed: ${oc.env:HOME}") + 1
    with pytest.raises(ConfigError, match=rf"run/config.yaml:{line}: holds an interpolation"):
        from_yaml(text, type(config), "run/config.yaml")
