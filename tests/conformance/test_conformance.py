"""Every recipe of every installed plugin passes the core's conformance kit.

`recipe_name` is parametrised by the omnimask pytest plugin with every discovered recipe, so a
new recipe is covered the moment its plugin is installed.
"""

import pytest
from omnimask.plugins import discover
from omnimask.testing import CHECKS, subject


def test_every_installed_plugin_loads() -> None:
    problems = [f"{p.entry_point}: {p.reason}" for p in discover().problems]
    assert not problems, "plugins failed to load:\n" + "\n".join(problems)


@pytest.mark.parametrize("check", CHECKS, ids=[check.__name__ for check in CHECKS])
def test_recipe_conformance(recipe_name: str, check) -> None:  # noqa: ANN001
    check(subject(recipe_name))
