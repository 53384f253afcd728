"""pytest plugin (entry point `pytest11`): a test that takes `recipe_name` runs once per recipe
discovered from installed plugins, so a new recipe is tested the moment it is registered."""

from __future__ import annotations

import pytest


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "recipe_name" in metafunc.fixturenames:
        from omnimask.plugins import discover

        metafunc.parametrize("recipe_name", discover().recipe_names())
