"""Optimisers from timm and the weight-decay exclusions."""

import copy

import pytest
import torch
from omnimask.engine.optim import build_optimizer, effective_lr
from toy_recipe import ToyRecipe


@pytest.mark.parametrize("name", ["adamw", "lamb", "lion"])
def test_optimizers_exclude_biases_norms_and_tokens_from_decay(name: str) -> None:
    recipe = ToyRecipe()
    config = recipe.config("demo")
    config.train.optimizer = name
    model = torch.nn.Sequential(recipe.build_model(config).encoder, torch.nn.LayerNorm(16))
    optimizer = build_optimizer(model, config.train)
    decay_of = {
        id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]
    }
    for parameter_name, parameter in model.named_parameters():
        expected = 0.0 if parameter.ndim <= 1 else config.train.weight_decay
        assert decay_of[id(parameter)] == expected, parameter_name
    before = [p.detach().clone() for p in model.parameters()]
    loss = model[1](model[0].body(torch.randn(2, 8, 4))).pow(2).mean()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_unknown_optimizer_is_named() -> None:
    config = ToyRecipe().config("demo")
    config.train.optimizer = "sgdd"
    with pytest.raises(ValueError, match="train.optimizer must be one of"):
        build_optimizer(torch.nn.Linear(2, 2), config.train)


def test_lr_scales_with_the_global_batch() -> None:
    config = ToyRecipe().config("demo").train
    config.lr, config.lr_scale_batch, config.batch_size, config.grad_accum = 1e-4, 256, 64, 2
    assert effective_lr(config, num_processes=4) == pytest.approx(1e-4 * 512 / 256)


def test_adamw_is_fused_and_matches_the_per_tensor_loop() -> None:
    config = ToyRecipe().config("demo")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    reference = copy.deepcopy(model)
    fused = build_optimizer(model, config.train)
    assert fused.defaults["fused"] is True
    twin = dict(zip(model.parameters(), reference.parameters()))
    keys = ("lr", "betas", "eps", "weight_decay")
    groups = [
        {"params": [twin[p] for p in group["params"]], **{k: group[k] for k in keys}}
        for group in fused.param_groups
    ]
    loop = torch.optim.AdamW(groups, foreach=False, fused=False)
    for step in range(3):
        inputs = torch.randn(5, 4, generator=torch.Generator().manual_seed(step))
        for net, optimizer in ((model, fused), (reference, loop)):
            optimizer.zero_grad()
            net(inputs).pow(2).mean().backward()
            optimizer.step()
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
