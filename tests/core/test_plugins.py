"""Plugin discovery: broken, incompatible and under-installed plugins are reported, not fatal."""

from importlib.metadata import EntryPoint

import pytest
from omnimask import plugins
from omnimask.plugins import PluginError, UnknownRecipeError, discover, get_recipe


def entry(name: str, value: str) -> EntryPoint:
    return EntryPoint(name=name, value=value, group=plugins.ENTRY_POINT_GROUP)


FAKE = [
    entry("good", "fake_plugins:good"),
    entry("broken", "broken_plugin:spec"),
    entry("future", "fake_plugins:incompatible"),
    entry("needy", "fake_plugins:missing_dependency"),
    entry("dict", "fake_plugins:not_a_spec"),
]


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(plugins, "_entry_points", lambda: list(FAKE))
    monkeypatch.delenv("OMNIMASK_STRICT_PLUGINS", raising=False)
    discover.cache_clear()
    yield
    discover.cache_clear()


def test_broken_plugins_are_reported_and_the_good_one_works(fake_entry_points):
    found = discover()
    assert list(found.plugins) == ["good"]
    reasons = {p.entry_point.split()[0]: p.reason for p in found.problems}
    assert "ImportError" in reasons["broken"] and "libfoo.so" in reasons["broken"]
    assert "needs omnimask core API >=2.0" in reasons["future"]
    assert "missing dependency: no_such_module_xyz" in reasons["needy"]
    assert "not a PluginSpec" in reasons["dict"]
    recipe = get_recipe("good/mim")
    assert recipe.name == "toy/mim"


def test_strict_mode_turns_problems_into_errors(fake_entry_points, monkeypatch):
    monkeypatch.setenv("OMNIMASK_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="libfoo.so"):
        discover()


def test_discovery_runs_once(fake_entry_points, monkeypatch):
    calls = []
    monkeypatch.setattr(plugins, "_entry_points", lambda: calls.append(1) or list(FAKE))
    discover.cache_clear()
    discover()
    discover()
    assert calls == [1]


def test_unknown_recipe_suggests_close_matches(fake_entry_points):
    with pytest.raises(UnknownRecipeError) as raised:
        get_recipe("good/mmi")
    message = str(raised.value)
    assert "did you mean good/mim" in message
    assert "broken" in message  # points at plugins that failed to load


def test_api_range_uses_version_semantics_not_strings():
    spec = plugins.PluginSpec(name="x", modality="t", version="1", core_api=">=0.9,<0.10")
    # As strings "0.10" < "0.9"; as versions 0.1 is outside [0.9, 0.10).
    assert "needs omnimask core API" in plugins.check_spec(spec, "0.1")
    assert plugins.check_spec(spec, "0.9.3") is None
    bad = plugins.PluginSpec(name="x", modality="t", version="1", core_api="~=banana")
    assert "not a valid version specifier" in plugins.check_spec(bad, "0.1")


def test_recipe_names_must_carry_the_plugin_prefix():
    spec = plugins.PluginSpec(
        name="x", modality="t", version="1", core_api=">=0.1", recipes={"y/m": "a:b"}
    )
    assert "must start with 'x/'" in plugins.check_spec(spec, "0.1")
