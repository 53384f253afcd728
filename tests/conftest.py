"""Suite-wide test settings: `cuda` tests skip on machines without a CUDA GPU."""

import pytest
import torch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def pytest_configure(config: pytest.Config) -> None:
    # Tiny test models run fastest single-threaded, and pytest-xdist already runs one worker per
    # core; torch's default of one thread per core oversubscribes the machine.
    torch.set_num_threads(1)
