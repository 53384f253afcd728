"""The ModernBERT variant (gated MLP, rotary positions; the `mosaic` preset's encoder): packed
rows encode like separate documents, and its HF export gives identical logits."""

from __future__ import annotations

import torch
from omnimask.config import apply_overrides
from omnimask.export import export_model
from omnimask_text.dataset import build_rows, collate_rows
from transformers import AutoModelForMaskedLM


def test_modernbert_packing_and_export(mlm_recipe, embedded_tokenizer, tmp_path) -> None:  # noqa: ANN001
    overrides = ["model.hidden=32", "model.layers=1", "model.heads=2", "model.intermediate=48"]
    config = apply_overrides(mlm_recipe.config("demo_modernbert"), overrides)
    torch.manual_seed(0)
    model = mlm_recipe.build_model(config).eval()
    assert type(model.encoder.backbone).__name__ == "ModernBertModel"
    texts = ["read the whole file", "close the socket and release its resources"]
    packed = collate_rows([build_rows(config, embedded_tokenizer, texts)[0]])
    with torch.no_grad():
        together = model.encoder.forward_features(model.tokenizer(packed))[0]
        for document in (1, 2):
            ids = packed["input_ids"][0][packed["sequence_ids"][0] == document].unsqueeze(0)
            alone = {"input_ids": ids, "sequence_ids": torch.ones_like(ids)}
            own = model.encoder.forward_features(model.tokenizer(alone))[0]
            torch.testing.assert_close(
                together[packed["sequence_ids"][0] == document], own, atol=1e-5, rtol=1e-4
            )
        path = export_model(mlm_recipe, model, config, "hf", tmp_path / "hf")
        hf_model = AutoModelForMaskedLM.from_pretrained(path).eval()
        ids = torch.tensor([[2, 40, 41, 42, 3]])
        tokens = model.tokenizer({"input_ids": ids, "sequence_ids": torch.ones_like(ids)})
        ours = model.decoder.logits(model.encoder.forward_features(tokens))
        theirs = hf_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.equal(ours, theirs)

    model.train()
    batch = {**packed, "sample_id": torch.tensor([0])}
    losses = model(batch, torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
