"""pytest plugin (entry point `pytest11`): a test that takes `recipe_name` runs once per recipe
discovered from installed plugins, so a new recipe is tested the moment it is registered; and
`omnimask_tmp_data_dir`, which puts generated default data in a per-session temporary folder
instead of the user's cache."""

from __future__ import annotations

import pytest


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "recipe_name" in metafunc.fixturenames:
        from omnimask.plugins import discover

        metafunc.parametrize("recipe_name", discover().recipe_names())


@pytest.fixture(scope="session")
def omnimask_tmp_data_dir(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """`$OMNIMASK_DATA_DIR` set to a session temporary folder while the session runs: a plugin's
    tests generate its default data there (`omnimask.data.default_data_dir`). Use it from an
    autouse fixture in the plugin's `conftest.py`."""
    folder = tmp_path_factory.mktemp("omnimask-data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMNIMASK_DATA_DIR", str(folder))
        yield folder
