"""`train.strategy=fsdp`: which modules are sharded, and two CPU processes (gloo) sharding the
toy model train exactly like one process with the doubled batch, checkpoint full weights that a
plain model loads, and resume exactly. (Every recipe's model is checked under sharding by the
conformance kit's `check_trains_sharded`.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from omnimask.config import ConfigError, apply_overrides
from omnimask.engine import ResumeError
from omnimask.engine.checkpoint import list_checkpoints, load_weights
from omnimask.engine.fsdp import shard_units
from omnimask.engine.metrics import read_metrics
from safetensors.torch import load_file
from test_engine import BIN, RUN_TOY, free_port, losses, train
from torch import nn
from toy_recipe import ToyRecipe


def test_the_units_are_the_layers_of_stacks_of_repeated_blocks() -> None:
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=3)
    assert shard_units(vit) == list(vit.blocks)
    resnet = timm.create_model("resnet18", pretrained=False)
    stages = (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4)
    assert shard_units(resnet) == [block for stage in stages for block in stage]


def test_lists_of_plain_layers_are_no_stack_and_a_layer_of_parts_shards_each_part() -> None:
    class Parts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norms = nn.ModuleList(nn.LayerNorm(4) for _ in range(3))  # leaves: no stack
            self.layers = nn.ModuleList(  # CROMA's `[attention, feed-forward]` per layer
                nn.ModuleList([nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4))])
                for _ in range(2)
            )

    parts = Parts()
    assert shard_units(parts) == [part for layer in parts.layers for part in layer]


def test_a_module_that_runs_its_layers_by_parts_is_one_unit() -> None:
    class Decoder(nn.Module):
        fsdp_unit = True

        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(*(nn.Sequential(nn.Linear(4, 4)) for _ in range(2)))

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = nn.Sequential(*(nn.Sequential(nn.Linear(4, 4)) for _ in range(2)))
            self.decoder = Decoder()

    model = Model()
    assert shard_units(model) == [*model.encoder, model.decoder]


def test_an_unknown_strategy_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"train\.strategy='zero' .*must be one of ddp, fsdp"):
        apply_overrides(ToyRecipe().config("demo"), ["train.strategy=zero"])


def test_resuming_with_another_strategy_is_refused(tmp_path: Path) -> None:
    train(tmp_path / "run")
    with pytest.raises(ResumeError, match=r"train\.strategy: saved 'ddp', now 'fsdp'"):
        train(tmp_path / "run", "train.strategy=fsdp")


#: a model of 3 repeated layers (sharded one by one), a different number of hidden tokens per
#: sample weighed across processes, accumulation, clipping, an EMA and health checks
FSDP_ARGS = [
    "model.dropout=0.0",
    "model.depth=3",
    "model.ragged=true",
    "model.weighted=true",
    "train.clip_grad=0.5",
    "train.ema_decay=0.9",
    "train.monitor_every=4",
]


def launch_two_processes(run: Path, *args: str) -> None:
    launch = [BIN / "accelerate", "launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*launch, RUN_TOY, run, *args], check=True, env=env)


def checkpoint_file(run: Path, name: str) -> Path:
    _, newest = list_checkpoints(run / "checkpoints")[0]
    return newest / name


def test_two_sharded_processes_match_one_process_and_resume_exactly(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, RUN_TOY, one, *FSDP_ARGS, "train.batch_size=8"], check=True, env=env
    )
    sharded = [*FSDP_ARGS, "train.strategy=fsdp", "train.batch_size=2", "train.grad_accum=2"]
    launch_two_processes(two, *sharded)

    one_metrics, two_metrics = (
        read_metrics(one / "metrics.jsonl"),
        read_metrics(two / "metrics.jsonl"),
    )
    torch.testing.assert_close(
        torch.tensor(losses(two_metrics)), torch.tensor(losses(one_metrics)), rtol=1e-5, atol=1e-6
    )
    health = [(s, k) for s, r in one_metrics.items() for k in r if k.startswith("health/")]
    assert len(health) > 4, "the health monitors ran"
    for step, key in health:
        assert two_metrics[step][key] == pytest.approx(one_metrics[step][key], rel=1e-4, abs=1e-6)
    # full weights, saved as one process saves them: the same keys, loadable into a plain model
    for name in ("model.safetensors", "ema.safetensors"):
        expected, actual = (
            load_file(checkpoint_file(one, name)),
            load_file(checkpoint_file(two, name)),
        )
        assert actual.keys() == expected.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)
    recipe = ToyRecipe()
    plain = recipe.build_model(apply_overrides(recipe.config("demo"), FSDP_ARGS))
    load_weights(plain, checkpoint_file(two, "model.safetensors"))

    # As if the run had been killed after its step-4 checkpoint: resumed, it trains the same
    # steps into the same weights.
    resumed = tmp_path / "resumed"
    shutil.copytree(two, resumed)
    for step, path in list_checkpoints(resumed / "checkpoints"):
        if step > 4:
            shutil.rmtree(path)
    launch_two_processes(resumed, *sharded)
    records = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert {"event": "resume", "step": 4} in records
    assert losses(read_metrics(resumed / "metrics.jsonl")) == losses(two_metrics)
    for name in ("model.safetensors", "ema.safetensors"):
        assert (
            checkpoint_file(resumed, name).read_bytes() == checkpoint_file(two, name).read_bytes()
        )
