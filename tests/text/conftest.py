"""Shared fixtures of the text plugin tests: the embedded vocabulary and a tiny model config."""

from __future__ import annotations

import pytest
import torch
from omnimask.plugins import get_recipe


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> None:
    """Tiny models gain nothing from threads, and the test machine is shared."""
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def mlm_recipe():  # noqa: ANN201
    return get_recipe("text/mlm")


@pytest.fixture(scope="session")
def embedded_tokenizer(mlm_recipe):  # noqa: ANN001, ANN201
    from omnimask_text.dataset import resolve_tokenizer

    return resolve_tokenizer(mlm_recipe.config("demo"))
