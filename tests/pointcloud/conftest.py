"""One torch thread for this folder's tests: on a shared 2-core machine, OpenMP's spinning
threads make these small-tensor tests about ten times slower, not faster."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
