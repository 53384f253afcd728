"""Point-BERT's point-patch mixing and its momentum-contrast term (`PointBERTModel`): mixed
clouds are made of whole patches of a cloud and of the cloud mirrored in the batch, the loss is
the two code cross-entropies plus the contrastive term, and the key encoder and queue move only
in training mode."""

import pytest
import torch
import torch.nn.functional as F
from omnimask.plugins import get_recipe
from omnimask.visualize import sample_batch
from omnimask_pointcloud.models.point_bert import (
    MIXED_MASK_SALT,
    PointBERTModel,
    mix_patches,
    salted,
)


@pytest.fixture(scope="module")
def model_and_batch() -> tuple:
    recipe = get_recipe("pointcloud/point_bert")
    config = recipe.config("demo")
    batch = sample_batch(recipe, config, recipe.build_dataset(config), 4)
    torch.manual_seed(0)
    return recipe.build_model(config), batch


def test_pointcloud_patch_mixing_takes_whole_patches_of_the_mirrored_cloud(
    model_and_batch: tuple,
) -> None:
    model, batch = model_and_batch
    tokens = model.tokenizer(batch)
    codes = model.target(batch, tokens)
    generator = torch.Generator().manual_seed(1)
    mixed, mixed_codes, share, keep = mix_patches(tokens, codes, generator)
    own, other = tokens.extras["neighbourhood"], tokens.extras["neighbourhood"].flip(0)
    points = mixed.extras["neighbourhood"]
    kept = (points == own).flatten(2).all(-1)
    taken = (points == other).flatten(2).all(-1)
    assert (kept | taken).all()  # every patch is one source's patch, whole
    assert torch.equal(kept | ~taken, keep | ~taken)  # `keep` says which (where they differ)
    assert ((~kept) & taken).any() and (kept & ~taken).any()  # and both sources occur
    assert torch.equal(mixed.positions[kept], tokens.positions[kept])
    assert torch.equal(mixed.positions[~kept], tokens.positions.flip(0)[~kept])
    assert torch.equal(mixed_codes[kept], codes[kept])
    assert torch.equal(mixed_codes[~kept], codes.flip(0)[~kept])
    assert torch.equal(mixed.values, points.flatten(2))
    assert ((share >= 0) & (share <= 1)).all()


def test_pointcloud_point_bert_loss_is_both_code_losses_plus_contrast(
    model_and_batch: tuple,
) -> None:
    model, batch = model_and_batch
    assert isinstance(model, PointBERTModel)
    model.eval()
    losses = model(batch, torch.Generator().manual_seed(2))
    expected = losses["code_loss"] + losses["mixed_code_loss"] + model.weight * losses["contrast"]
    torch.testing.assert_close(losses["loss"], expected)
    assert losses["contrast"] > 0


def test_pointcloud_point_bert_contrast_by_hand(model_and_batch: tuple) -> None:
    """Mixed cloud i's positives: its own source's key (weight share_i) and the mirrored
    source's (1 - share_i); negatives: the other keys of the batch and the queue."""
    model, _ = model_and_batch
    query = F.normalize(torch.randn(4, model.queue.shape[1]), dim=1)
    keys = F.normalize(torch.randn(4, model.queue.shape[1]), dim=1)
    share = torch.tensor([1.0, 0.0, 0.25, 0.5])
    expected = []
    for i in range(4):
        logits = torch.cat([keys, model.queue]) @ query[i] / model.temperature
        log_p = logits.log_softmax(0)
        expected.append(-(share[i] * log_p[i] + (1 - share[i]) * log_p[3 - i]))
    torch.testing.assert_close(model.contrast(query, keys, share), torch.stack(expected).mean())


def test_pointcloud_point_bert_key_encoder_and_queue_move_in_training_only(
    model_and_batch: tuple,
) -> None:
    model, batch = model_and_batch
    with torch.no_grad():
        for parameter in model.encoder.parameters():
            parameter.add_(0.1)  # query weights away from the key weights
    key_before = [p.clone() for p in model.key_encoder.parameters()]
    queue_before, next_before = model.queue.clone(), int(model.queue_next)
    model.eval()
    with torch.no_grad():
        model(batch, torch.Generator().manual_seed(4))
    assert torch.equal(model.queue, queue_before) and int(model.queue_next) == next_before
    assert all(torch.equal(a, b) for a, b in zip(key_before, model.key_encoder.parameters()))
    model.train()
    with torch.no_grad():
        model(batch, torch.Generator().manual_seed(4))
    for before, key, query in zip(
        key_before, model.key_encoder.parameters(), model.encoder.parameters()
    ):
        torch.testing.assert_close(key, model.momentum * before + (1 - model.momentum) * query)
    rows = len(batch["sample_id"])
    assert int(model.queue_next) == (next_before + rows) % model.queue.shape[0]
    written = torch.arange(next_before, next_before + rows) % model.queue.shape[0]
    assert not torch.equal(model.queue[written], queue_before[written])
    torch.testing.assert_close(model.queue[written].norm(dim=1), torch.ones(rows))
    assert not any(p.requires_grad for p in model.key_encoder.parameters())


def test_pointcloud_point_bert_keys_see_a_block_mask_of_their_own(
    model_and_batch: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Point-BERT's key encoder masks its input too, with a mask drawn apart from the query's."""
    model, batch = model_and_batch
    seen = []
    encode = model.key_encoder.encode
    monkeypatch.setattr(model.key_encoder, "encode", lambda t, m: seen.append(m) or encode(t, m))
    model.eval()
    with torch.no_grad():
        output = model.predict(batch, torch.Generator().manual_seed(5))
    (key_mask,) = seen
    groups = key_mask.shape[1]
    hidden = key_mask.sum(1)
    assert ((hidden >= round(0.25 * groups)) & (hidden <= round(0.45 * groups))).all()
    assert not torch.equal(key_mask, output.mask)


def test_pointcloud_point_bert_mixed_cloud_reuses_the_clean_patch_embeddings(
    model_and_batch: tuple,
) -> None:
    """The mini-PointNet embeds each patch alone, so the query side embeds the batch once and
    rearranges the embeddings for the mixed cloud; in eval mode (BatchNorm's running
    statistics) its code loss is exactly that of encoding the mixed cloud from its points."""
    model, batch = model_and_batch
    model.eval()
    calls = []
    hook = model.encoder.patch_embed.register_forward_hook(lambda *_: calls.append(1))
    try:
        with torch.no_grad():
            losses = model(batch, torch.Generator().manual_seed(6))
    finally:
        hook.remove()
    assert len(calls) == 1
    with torch.no_grad():
        tokens = model.tokenizer(batch)
        codes = model.target(batch, tokens)
        generator = torch.Generator().manual_seed(6)
        mixed, mixed_codes, _, _ = mix_patches(tokens, codes, generator)
        mask = model.draw_mask(mixed, batch, salted(generator, MIXED_MASK_SALT))
        logits = model.decoder(model.encoder(mixed, mask), mixed, mask)
        expected = model.target.loss(logits, mixed_codes, mask)["loss"]
    torch.testing.assert_close(losses["mixed_code_loss"], expected)
