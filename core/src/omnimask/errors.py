"""The errors a user's input can cause, in a module that imports nothing heavy: the CLI's fast
commands (`--help`, `plugins`, `recipes`) report them without importing torch. `omnimask.config`
and `omnimask.data` re-export them where plugins import them from."""

from __future__ import annotations

import os


class ConfigError(ValueError):
    """A bad override or an unusable config file."""


class DataPathError(ValueError):
    """A data path that is missing, empty or holds nothing readable."""


class BadSampleError(Exception):
    """A sample that cannot be used. Always names the file (or record) and what is wrong."""

    def __init__(self, source: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = str(source)
        self.reason = reason

    def __reduce__(self) -> tuple[type[BadSampleError], tuple[str, str]]:
        """Pickled with its two fields, so it crosses from a DataLoader worker intact."""
        return type(self), (self.source, self.reason)
