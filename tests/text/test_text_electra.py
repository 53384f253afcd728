"""ELECTRA: the generator's samples replace only masked positions, reproducibly, and the
discriminator's targets say exactly which tokens changed."""

from __future__ import annotations

import torch
from omnimask.config import apply_overrides
from omnimask.plugins import get_recipe
from omnimask_text.dataset import build_rows, collate_rows


def test_replacements_are_masked_positions_only(embedded_tokenizer) -> None:  # noqa: ANN001
    recipe = get_recipe("text/electra")
    config = apply_overrides(
        recipe.config("demo"), ["model.hidden=32", "model.layers=1", "electra.generator_hidden=16"]
    )
    torch.manual_seed(0)
    model = recipe.build_model(config).eval()
    texts = ["Return the number of items in a container.", "Open the file and read it.", "x"]
    rows = build_rows(config, embedded_tokenizer, texts)
    batch = collate_rows([rows[i] for i in range(len(rows))])
    batch["sample_id"] = torch.arange(len(rows))
    with torch.no_grad():
        first = model.predict(batch, torch.Generator().manual_seed(4))
        again = model.predict(batch, torch.Generator().manual_seed(4))
    tokens, mask = first.tokens, first.mask
    mask_id = embedded_tokenizer.token_to_id("[MASK]")
    assert torch.equal(
        tokens.extras["corrupted_ids"][mask], torch.full_like(tokens.values[mask], mask_id)
    )
    changed = tokens.extras["discriminator_ids"] != tokens.values
    assert not (changed & ~mask).any()
    assert torch.equal(first.target == 1, changed & ~tokens.padding)
    assert (first.target[tokens.padding] == -1).all()
    assert torch.equal(tokens.extras["discriminator_ids"], again.tokens.extras["discriminator_ids"])
    losses = first.losses
    expected = losses["mlm_loss"] + config.electra.discriminator_weight * losses["rtd_loss"]
    torch.testing.assert_close(losses["loss"], expected)
