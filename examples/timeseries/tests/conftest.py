"""Test settings: the embedded data goes to a per-session folder, never the user's cache (the
core's `omnimask_tmp_data_dir` fixture), and torch runs single-threaded (the test models are
tiny; extra threads only add contention)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def default_data_in_tmp(omnimask_tmp_data_dir):  # noqa: ANN001, ANN201
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
