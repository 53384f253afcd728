"""The conformance kit every recipe of every plugin passes (see `conformance.CHECKS`).

Use it from a plugin's tests::

    from omnimask.testing import run_conformance
    run_conformance("myplugin/method")

or through the pytest plugin: a test that takes a `recipe_name` argument is run once per
discovered recipe. `train_on_files_and_on_shards` and `logged_losses` compare a run on a
recipe's shard set with the run on its files.
"""

from omnimask.testing.conformance import CHECKS, Subject, run_conformance, subject
from omnimask.testing.shards import logged_losses, train_on_files_and_on_shards

__all__ = [
    "CHECKS",
    "Subject",
    "logged_losses",
    "run_conformance",
    "subject",
    "train_on_files_and_on_shards",
]
