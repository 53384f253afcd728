"""The conformance kit every recipe of every plugin passes (see `conformance.CHECKS`).

Use it from a plugin's tests::

    from omnimask.testing import run_conformance
    run_conformance("myplugin/method")

or through the pytest plugin: a test that takes a `recipe_name` argument is run once per
discovered recipe.
"""

from omnimask.testing.conformance import CHECKS, Subject, run_conformance, subject

__all__ = ["CHECKS", "Subject", "run_conformance", "subject"]
