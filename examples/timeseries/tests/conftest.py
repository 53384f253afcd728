"""Test settings: the embedded data goes to a per-session folder, never the user's cache, and
torch runs single-threaded (the test models are tiny; extra threads only add contention)."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def default_data_in_tmp(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMNIMASK_DATA_DIR", str(tmp_path_factory.mktemp("omnimask-data")))
        yield
    torch.set_num_threads(threads)
