"""Checks that hold for every recipe: the contract of DESIGN.md, tested the same way for all.

Each check takes a `Subject` (a recipe with its demo config and a small fixed batch) and raises
`AssertionError` with a message naming the recipe when the contract is broken.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from omnimask.config import from_yaml, to_yaml
from omnimask.engine.optim import build_optimizer
from omnimask.export import export_model, load_safetensors_export
from omnimask.model import LOSS_WEIGHT, MaskedModel
from omnimask.plugins import discover, get_recipe, recipe_entry
from omnimask.recipe import Recipe, RecipeConfig
from omnimask.seeding import mix_seed, seeded_rng
from omnimask.shards import ShardableDataset, write_shard_set
from omnimask.visualize import sample_batch

BATCH_SIZE = 4
OVERFIT_STEPS = 30
OVERFIT_LR = 1e-3


@dataclass
class Subject:
    name: str
    recipe: Recipe
    config: RecipeConfig
    batch: dict[str, Any]

    def fresh_model(self, seed: int = 0) -> MaskedModel:
        torch.manual_seed(seed)
        return self.recipe.build_model(copy.deepcopy(self.config))


@cache
def subject(name: str) -> Subject:
    """The recipe, its demo config and a fixed batch of `BATCH_SIZE` embedded samples."""
    recipe = get_recipe(name)
    config = recipe.config("demo")
    config.train.batch_size = min(config.train.batch_size, BATCH_SIZE)
    batch = sample_batch(recipe, config, recipe.build_dataset(config), config.train.batch_size)
    return Subject(name, recipe, config, batch)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def check_builds_from_spec(s: Subject) -> None:
    plugin = discover().plugins[s.name.split("/")[0]]
    assert s.name in plugin.recipes, f"{s.name}: not declared by its plugin spec"
    entry = recipe_entry(plugin, s.name)
    if entry.presets or entry.summary:  # what `omnimask recipes` prints must be the class's
        assert entry.summary == s.recipe.summary, (
            f"{s.name}: the spec's summary {entry.summary!r} is not the recipe's "
            f"{s.recipe.summary!r}"
        )
        assert sorted(entry.presets) == sorted(s.recipe.presets), (
            f"{s.name}: the spec lists presets {sorted(entry.presets)}, the recipe has "
            f"{sorted(s.recipe.presets)}"
        )
    assert "demo" in s.recipe.presets, f"{s.name}: no 'demo' preset"
    assert len(s.recipe.presets) >= 2, f"{s.name}: needs the paper preset beside 'demo'"
    for preset in s.recipe.presets:
        config = s.recipe.config(preset)
        assert isinstance(config, s.recipe.config_class), f"{s.name}/{preset}: wrong config type"
        again = from_yaml(to_yaml(config), s.recipe.config_class)
        assert again == config, f"{s.name}/{preset}: config does not survive a YAML round trip"
    assert isinstance(s.fresh_model(), MaskedModel), f"{s.name}: build_model is no MaskedModel"


def check_masks_reproducible(s: Subject) -> None:
    model = s.fresh_model()
    tokens = model.tokenizer(s.batch)
    first = model.draw_mask(tokens, s.batch, _generator(7))
    again = model.draw_mask(tokens, s.batch, _generator(7))
    assert first.dtype == torch.bool, f"{s.name}: mask must be bool, got {first.dtype}"
    assert first.shape == (tokens.batch_size, tokens.num_tokens), f"{s.name}: mask shape"
    assert torch.equal(first, again), f"{s.name}: same seed gave different masks"
    assert first.any(), f"{s.name}: nothing was masked"
    assert not first.all(), f"{s.name}: everything was masked"
    others = [model.draw_mask(tokens, s.batch, _generator(seed)) for seed in range(8, 12)]
    assert any(not torch.equal(first, other) for other in others), f"{s.name}: mask ignores seed"


def check_forward_backward(s: Subject) -> None:
    model = s.fresh_model().train()
    losses = model(s.batch, _generator(0))
    assert "loss" in losses, f"{s.name}: the loss dict has no 'loss'"
    loss = losses["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss), f"{s.name}: loss {loss} is not a finite scalar"
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads, f"{s.name}: no parameter received a gradient"
    # DDP waits for a gradient of every trainable parameter: one the loss never uses stops
    # every multi-process run. Freeze (`requires_grad_(False)`) what pretraining does not run.
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, (
        f"{s.name}: trainable parameters unused by the loss ({', '.join(unused[:4])}): "
        "multi-process (DDP) training fails on them; freeze them"
    )
    assert all(torch.isfinite(g).all() for g in grads), f"{s.name}: non-finite gradients"
    assert any(g.abs().sum() > 0 for g in grads), f"{s.name}: all gradients are zero"
    features = model.embed(s.batch)
    assert features.ndim == 2 and features.shape[0] == len(s.batch["sample_id"]), (
        f"{s.name}: embed must return [B, D], got {tuple(features.shape)}"
    )
    assert torch.isfinite(features).all(), f"{s.name}: non-finite features"


def check_state_dict_round_trip(s: Subject) -> None:
    model = s.fresh_model(seed=0).eval()
    other = s.fresh_model(seed=1).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        save_model(model, str(path))
        load_model(other, str(path))
    with torch.no_grad():
        expected = model(s.batch, _generator(3))["loss"]
        actual = other(s.batch, _generator(3))["loss"]
    assert torch.equal(expected, actual), f"{s.name}: reloaded model gives a different loss"


def check_export_round_trip(s: Subject) -> None:
    model = s.fresh_model().eval()
    expected = model.embed(s.batch)
    for fmt in ("safetensors", *s.recipe.export_formats):
        with tempfile.TemporaryDirectory() as folder:
            path = export_model(s.recipe, model, s.config, fmt, Path(folder))
            if fmt == "safetensors":
                _, _, loaded = load_safetensors_export(path)
                actual = loaded.embed(s.batch)
            else:
                embed = s.recipe.load_export(s.config, fmt, path)
                with torch.no_grad():
                    actual = embed(s.batch)
        label = f"{s.name} {fmt} export"
        torch.testing.assert_close(
            actual, expected, atol=1e-5, rtol=1e-4, msg=lambda m, label=label: f"{label}: {m}"
        )


def check_loss_falls_on_fixed_batch(s: Subject) -> None:
    """A few optimiser steps on one batch with one mask must lower the loss."""
    model = s.fresh_model().train()
    config = copy.deepcopy(s.config.train)
    config.lr = getattr(s.recipe, "overfit_lr", OVERFIT_LR)
    config.lr_scale_batch = 0
    optimizer = build_optimizer(model, config)
    history = []
    for _ in range(getattr(s.recipe, "overfit_steps", OVERFIT_STEPS)):
        loss = model(s.batch, _generator(5))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    first, last = history[0], sum(history[-3:]) / 3
    assert last < 0.9 * first, f"{s.name}: loss did not fall on a fixed batch: {history}"


def split_batch(batch: dict[str, Any], rows: list[int]) -> dict[str, Any]:
    """The samples `rows` of an engine batch (tensors and lists with one entry per sample)."""
    count = len(batch["sample_id"])
    index = torch.tensor(rows)

    def take(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == count:
            return value[index]
        if isinstance(value, list) and len(value) == count:
            return [value[i] for i in rows]
        return value

    return {key: take(value) for key, value in batch.items()}


def combine_halves(first: dict[str, Any], second: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The loss terms of a batch from those of its two halves, as the engine combines processes
    and micro-batches: weighted by `loss_weight` where the recipe returns one, else equally."""
    if LOSS_WEIGHT in first:
        a, b = first[LOSS_WEIGHT].float(), second[LOSS_WEIGHT].float()
        return {k: (first[k] * a + second[k] * b) / (a + b) for k in first if k != LOSS_WEIGHT}
    return {k: (first[k] + second[k]) / 2 for k in first}


def check_loss_independent_of_batch_split(s: Subject) -> None:
    """One process with a batch must compute what two processes (or two micro-batches) with its
    halves compute: the promise that N processes with batch B train like one with N x B. Terms
    the recipe declares in `batch_coupled_terms` are left out (a recipe whose `loss` holds a
    coupled term declares `loss` too), and so are terms that a half does not report (a metric
    of what the half lacks); `num_tokens` is a count, not a loss. Run in eval mode, whose
    dropout draws nothing, so that only the split differs."""
    model = s.fresh_model().eval()
    rows = list(range(len(s.batch["sample_id"])))
    half = len(rows) // 2
    with torch.no_grad():
        whole = model(s.batch, _generator(3))
        first = model(split_batch(s.batch, rows[:half]), _generator(3))
        second = model(split_batch(s.batch, rows[half:]), _generator(3))
    shared = set(whole) & set(first) & set(second)
    combined = combine_halves({k: first[k] for k in shared}, {k: second[k] for k in shared})
    skipped = {*s.recipe.batch_coupled_terms, "num_tokens", LOSS_WEIGHT}
    for key in sorted(shared - skipped):
        torch.testing.assert_close(
            combined[key].float(),
            whole[key].float(),
            atol=1e-5,
            rtol=1e-4,
            msg=lambda m, key=key: (
                f"{s.name}: loss term '{key}' depends on how the batch is split (see 'Losses "
                f"and the batch' in core/README.md): {m}"
            ),
        )


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_draws_a_figure(s: Subject) -> None:
    """`visualize` writes a PNG for the fixed batch (what `omnimask visualize` calls)."""
    model = s.fresh_model().eval()
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        path = s.recipe.visualize(model, s.config, s.batch, Path(folder) / "figure.png")
        written = Path(path).read_bytes()
    assert written.startswith(PNG_SIGNATURE), f"{s.name}: visualize wrote no PNG to {path}"


def check_compiles_like_eager(s: Subject) -> None:
    """`train.compile=true` must give the eager losses. TorchDynamo with its eager backend
    traces exactly what `torch.compile` traces (graph breaks included) without inductor's code
    generation, so it catches capture bugs in seconds."""
    from torch._dynamo.utils import counters

    model = s.fresh_model().eval()  # eval: no dropout, whose random draws differ when traced
    with torch.no_grad():
        expected = model(s.batch, _generator(3))
        torch._dynamo.reset()  # fresh caches (and counters) for this model
        actual = torch.compile(model, backend="eager")(s.batch, _generator(3))
    assert counters["stats"]["unique_graphs"] > 0, f"{s.name}: dynamo captured no graph"
    assert actual.keys() == expected.keys(), (
        f"{s.name}: compiled model returned {sorted(actual)}, eager {sorted(expected)}"
    )
    for key, value in expected.items():
        torch.testing.assert_close(
            actual[key], value, msg=lambda m, key=key: f"{s.name} compiled '{key}': {m}"
        )


@contextmanager
def _single_process_group() -> Iterator[None]:
    """A gloo process group of this process alone, in memory, for the length of the block."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_trains_sharded(s: Subject) -> None:
    """`train.strategy=fsdp` (`omnimask.engine.fsdp`) computes what the plain model computes:
    the same loss, gradients, embeddings and code ids. Run on a process group of one, whose
    shards are whole tensors; sharding still turns the parameters into `DTensor`s, so a module
    that uses a unit's parameters outside that unit's `forward` fails here as on N devices."""
    from torch.distributed.tensor import DTensor

    from omnimask.engine import fsdp

    plain, sharded = s.fresh_model().train(), s.fresh_model().train()
    with _single_process_group():
        fsdp.shard(sharded, torch.device("cpu"), 1)
        results = []
        for model in (plain, sharded):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # the same dropout draws
                loss = model(s.batch, _generator(3))["loss"]
            loss.backward()
            grads = {
                n: p.grad.full_tensor() if isinstance(p.grad, DTensor) else p.grad
                for n, p in model.named_parameters()
                if p.grad is not None
            }
            model.eval()
            with torch.no_grad():
                features = model.embed(s.batch)
                codes = {k: v.ids for k, v in model.code_ids(s.batch).items()}
            results.append((loss.detach(), grads, features, codes))
    (loss, grads, features, codes), (loss_s, grads_s, features_s, codes_s) = results
    torch.testing.assert_close(loss_s, loss, msg=lambda m: f"{s.name} sharded loss: {m}")
    assert grads_s.keys() == grads.keys(), f"{s.name}: sharded gradients of other parameters"
    for name, grad in grads.items():
        torch.testing.assert_close(
            grads_s[name], grad, msg=lambda m, name=name: f"{s.name} sharded grad {name}: {m}"
        )
    torch.testing.assert_close(features_s, features, msg=lambda m: f"{s.name} sharded embed: {m}")
    assert codes_s.keys() == codes.keys(), f"{s.name}: sharded code ids of other quantizers"
    for name, ids in codes.items():
        assert torch.equal(codes_s[name], ids), f"{s.name}: sharded code ids of {name} differ"


#: samples of the embedded data that `check_shards_reproduce_the_data` writes and reads back
SHARD_SAMPLES = 3


class FirstRecords:
    """The first `count` samples of a `ShardableDataset`, as one (for a small shard set)."""

    def __init__(self, dataset: ShardableDataset, count: int) -> None:
        self.dataset, self.count = dataset, min(count, len(dataset))
        self.record_kind = dataset.record_kind

    def __len__(self) -> int:
        return self.count

    def record(self, index: int) -> dict[str, Any]:
        return self.dataset.record(index)

    def sample(self, record: dict[str, Any]) -> dict[str, Any]:
        return self.dataset.sample(record)

    def shard_attributes(self) -> dict[str, Any]:
        return getattr(self.dataset, "shard_attributes", dict)()


def _assert_same_sample(name: str, actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), (
            f"{name}: {where} has keys {sorted(actual)}, the raw sample {sorted(expected)}"
        )
        for key in expected:
            _assert_same_sample(name, actual[key], expected[key], f"{where}[{key!r}]")
    elif isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, msg=f"{name}: {where}")
    else:
        assert actual == expected, f"{name}: {where} is {actual!r}, the raw sample {expected!r}"


def check_shards_reproduce_the_data(s: Subject) -> None:
    """`omnimask prepare --out` can write the recipe's training set as shards, and the recipe
    reads them back (`build_dataset` with `data.path` at the shards) into exactly the samples
    the raw data gives under the same per-sample seeds: what makes a run on shards the run on
    the raw data, resumable the same way."""
    config = copy.deepcopy(s.config)
    raw = s.recipe.build_dataset(config)
    assert isinstance(raw, ShardableDataset), (
        f"{s.name}: its training set ({type(raw).__name__}) has no `record`/`sample`/"
        "`record_kind` (omnimask.shards.ShardableDataset), so it cannot be written as shards"
    )
    first = FirstRecords(raw, SHARD_SAMPLES)
    seeds = [mix_seed(7, 0, index) for index in range(len(first))]
    expected = []
    for index, seed in enumerate(seeds):
        with seeded_rng(seed):
            expected.append(raw[index])
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "shards"
        write_shard_set(s.name, first, out, source=None)
        config.data.path = str(out)
        shards = s.recipe.build_dataset(config)
        assert len(shards) == len(first), f"{s.name}: {len(shards)} samples read back"
        for index, seed in enumerate(seeds):
            with seeded_rng(seed):
                _assert_same_sample(s.name, shards[index], expected[index], f"shard {index}")


CHECKS: tuple[Callable[[Subject], None], ...] = (
    check_builds_from_spec,
    check_masks_reproducible,
    check_forward_backward,
    check_state_dict_round_trip,
    check_export_round_trip,
    check_loss_falls_on_fixed_batch,
    check_loss_independent_of_batch_split,
    check_draws_a_figure,
    check_compiles_like_eager,
    check_trains_sharded,
    check_shards_reproduce_the_data,
)


def run_conformance(name: str) -> None:
    """Run every check on recipe `name` (raises on the first failure)."""
    for check in CHECKS:
        check(subject(name))
