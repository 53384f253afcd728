"""w2v-BERT's parts against references, and the contract of the recipe."""

from __future__ import annotations

import copy

import torch
from omnimask.testing import run_conformance
from omnimask.testing.conformance import subject
from omnimask_audio.models.w2v_bert import perplexity, sample_negatives

RECIPE = "audio/w2v_bert"
#: Effective codes in use (of the demo's 8) below which the codebook counts as collapsed.
PERPLEXITY_FLOOR = 4.0


def test_audio_w2v_bert_conformance() -> None:
    run_conformance(RECIPE)


def test_audio_both_losses_fall_and_codebook_stays_in_use() -> None:
    """25 AdamW steps on the demo model, a fixed batch and mask: the contrastive and the MLM
    loss each fall, and the codes in use never drop under the floor."""
    s = subject(RECIPE)
    model = s.fresh_model().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.98))
    history = []
    for _ in range(25):
        losses = model(s.batch, torch.Generator().manual_seed(5))  # one mask: overfit it
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: float(v) for k, v in losses.items()})
    for key in ("contrastive_loss", "mlm_loss"):
        first = sum(h[key] for h in history[:3]) / 3
        last = sum(h[key] for h in history[-3:]) / 3
        assert last < 0.9 * first, (key, [round(h[key], 3) for h in history])
    assert min(h["code_perplexity"] for h in history) > PERPLEXITY_FLOOR


def test_audio_contrastive_module_reads_the_right_layer() -> None:
    """`forward` returns the output of Conformer layer `contrastive_layers` and of the last layer,
    recomputed here layer by layer from transformers' modules."""
    s = subject(RECIPE)
    model = s.fresh_model().eval()
    tokens = model.tokenizer(s.batch)
    mask = model.draw_mask(tokens, s.batch, torch.Generator().manual_seed(0))
    with torch.no_grad():
        context, last = model.encoder(tokens, mask)
        hf = model.encoder.model
        hidden, _ = hf.feature_projection(tokens.values)
        hidden[mask] = hf.masked_spec_embed
        keep = ~tokens.padding
        hidden = hidden.masked_fill(tokens.padding.unsqueeze(-1), 0.0)
        outputs = []
        for row in range(len(hidden)):  # one clip at a time: no padding, no attention mask
            h = hidden[row : row + 1, keep[row]]
            # relative_key attention (the default) embeds distances inside each layer.
            assert hf.encoder.embed_positions is None
            positions = None
            per_layer = []
            for layer in hf.encoder.layers:
                h = layer(h, relative_position_embeddings=positions)
                per_layer.append(h)
            outputs.append(per_layer)
    layers = model.encoder.contrastive_layers
    for row, per_layer in enumerate(outputs):
        real = keep[row]
        torch.testing.assert_close(
            context[row, real], per_layer[layers - 1][0], atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(last[row, real], per_layer[-1][0], atol=1e-4, rtol=1e-4)


def test_audio_embedding_ignores_padding() -> None:
    s = subject(RECIPE)
    model = s.fresh_model().eval()
    batch = s.batch
    row = int(batch["lengths"].argmin())
    alone = {
        "features": batch["features"][row : row + 1, : batch["lengths"][row]],
        "lengths": batch["lengths"][row : row + 1],
    }
    torch.testing.assert_close(model.embed(alone)[0], model.embed(batch)[row], atol=1e-5, rtol=1e-4)


def test_audio_negatives_come_from_other_masked_frames_of_the_same_clip() -> None:
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[0, 3:13] = True
    mask[1, 20:21] = True  # a single masked frame: no other frame to contrast with
    mask[2, 0:25] = True
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    negatives = sample_negatives(mask, 50, generators)
    assert negatives.shape == (36, 50)
    owner = torch.tensor([0] * 10 + [1] + [2] * 25)
    own = torch.arange(36).unsqueeze(1)
    assert (owner[negatives] == owner.unsqueeze(1)).all()
    assert (negatives[:10] != own[:10]).all() and (negatives[11:] != own[11:]).all()
    assert (negatives[10] == 10).all()
    assert set(negatives[11:].flatten().tolist()) == set(range(11, 36))  # uniform covers all


def test_audio_perplexity_formula() -> None:
    uniform = torch.full((1, 64), 1 / 64)
    one_hot = torch.zeros(1, 64)
    one_hot[0, 3] = 1
    torch.testing.assert_close(perplexity(uniform), torch.tensor(64.0), rtol=1e-4, atol=0)
    torch.testing.assert_close(perplexity(one_hot), torch.tensor(1.0), rtol=1e-4, atol=0)
    assert torch.isclose(perplexity(torch.cat([uniform, one_hot])), torch.tensor(65.0), rtol=1e-4)


def test_audio_losses_reproducible_and_gumbel_annealed() -> None:
    s = subject(RECIPE)
    model = s.fresh_model().train()
    first = model(s.batch, torch.Generator().manual_seed(4))
    again = model(copy.deepcopy(s.batch), torch.Generator().manual_seed(4))
    assert torch.equal(first["loss"], again["loss"])
    quantizer = model.target.quantizer
    quantizer.set_progress(0.0)
    assert quantizer.temperature == 2.0
    quantizer.set_progress(1.0)
    assert abs(quantizer.temperature - 0.5) < 1e-9
    quantizer.set_progress(0.5)
    assert abs(quantizer.temperature - 1.0) < 1e-9


def test_audio_code_ids_are_the_quantizer_codes_of_real_frames() -> None:
    """The core's code-usage monitor sees exactly the codes the MLM module learns to predict:
    the argmax code of every unpadded frame, and so the quantizer's own code perplexity."""
    from omnimask.monitors import code_perplexity

    s = subject(RECIPE)
    model = s.fresh_model().eval()
    reported = model.code_ids(s.batch)
    quantizer = model.target.quantizer
    assert set(reported) == (
        {"quantizer"}
        if quantizer.codebooks == 1
        else {f"quantizer{g}" for g in range(quantizer.codebooks)}
    )
    tokens = model.tokenizer(s.batch)
    quantized = model.target(s.batch, tokens)
    real = ~tokens.padding
    for g, codes in enumerate(reported.values()):
        assert torch.equal(codes.ids, quantized.codes[..., g][real])
        assert codes.vocab_size == quantizer.codebook_size
    if quantizer.codebooks == 1:
        ours = code_perplexity(reported["quantizer"].ids, quantizer.codebook_size)
        assert abs(ours - float(quantized.code_perplexity)) < 1e-3 * ours


def test_audio_contrastive_accuracy_is_the_share_of_frames_whose_target_wins() -> None:
    """Four masked frames with orthogonal targets, each contrasted with the other three: two
    contexts point at their own target, two at another frame's, so the accuracy is 1/2."""
    from omnimask_audio.models.w2v_bert import Quantized

    target = subject(RECIPE).fresh_model().target
    quantizer = target.quantizer
    dim = quantizer.project.out_features
    vectors = torch.eye(4, dim).unsqueeze(0)  # [1, 4, dim]
    codes = torch.arange(4).view(1, 4, 1)
    quantized = Quantized(vectors, codes, torch.tensor(4.0), torch.tensor(4.0))
    mask = torch.ones(1, 4, dtype=torch.bool)
    negatives = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])
    context = vectors[0, [0, 1, 3, 0]]
    logits = torch.zeros(4, *quantizer.codebooks_shape)
    losses = target.loss({"context": context, "code_logits": logits}, quantized, mask, negatives)
    assert float(losses["contrastive_accuracy"]) == 0.5
