"""The conformance kit's checks catch what they are for (here: a loss that depends on how a
batch is split), on the toy recipe."""

from __future__ import annotations

import pytest
from omnimask.config import apply_overrides
from omnimask.testing.conformance import Subject, check_loss_independent_of_batch_split
from omnimask.visualize import sample_batch
from toy_recipe import ToyRecipe


def toy_subject(*overrides: str) -> Subject:
    recipe = ToyRecipe()
    config = apply_overrides(recipe.config("demo"), list(overrides))
    batch = sample_batch(recipe, config, recipe.build_dataset(config), 4)
    return Subject("toy/mim", recipe, config, batch)


def test_a_per_token_mean_over_ragged_masks_fails_the_split_check() -> None:
    with pytest.raises(AssertionError, match="loss term 'loss' depends on how the batch is split"):
        check_loss_independent_of_batch_split(toy_subject("model.ragged=true"))


def test_the_same_loss_with_its_weight_passes_the_split_check() -> None:
    check_loss_independent_of_batch_split(toy_subject("model.ragged=true", "model.weighted=true"))
    check_loss_independent_of_batch_split(toy_subject())  # equal counts need no weight


def test_a_declared_batch_coupled_term_is_left_out(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(ToyRecipe, "batch_coupled_terms", {"loss": "a toy's batch statistic"})
    check_loss_independent_of_batch_split(toy_subject("model.ragged=true"))
