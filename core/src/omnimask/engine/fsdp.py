"""Fully sharded data parallel training (`train.strategy=fsdp`), through torch's FSDP2.

Each process keeps a 1/N shard of every parameter, gradient and optimizer state; a layer's
parameters are gathered just before it runs and freed after. That is what lets the paper presets
whose weights, AdamW moments and activations do not fit one device train on several: the
arithmetic is DDP's (gradients averaged over processes), so a run's losses match a DDP run's
and one process's with the global batch.

Why torch's `fully_shard` and not Accelerate's FSDP plugin: Accelerate (1.15) sets FSDP aside on
CPU (`MULTI_CPU` processes always get DDP), so the path users run on GPUs could never be tested
with two CPU processes. `fully_shard` is the API Accelerate's `fsdp_version=2` wraps; calling it
ourselves gives one path, the same on gloo/CPU and NCCL/CUDA. Accelerate still launches the
processes, forms the process group, picks the device and does the bf16 autocast.

What is sharded: every layer of a model's stacks of repeated layers (timm's `blocks`, Hugging
Face's `encoder.layer`: a `ModuleList`/`Sequential` of two or more modules of one class), each
its own unit, then the rest of the model as the root unit. A unit's parameters are gathered by
its `forward`; a module that runs its layers otherwise (MAE's decoder computes its last block
by parts) sets `fsdp_unit = True` and is sharded as one unit, its layers with it.

Checkpoints hold full (unsharded) weights and optimizer state, gathered on the main process:
they load into a plain model, so eval and every export read them unchanged, and a resume loads
them before sharding again.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

#: `MaskedModel` methods other than `forward` that the engine runs on a sharded model (the
#: health monitors): they gather the root's parameters like `forward` does.
FORWARD_METHODS = ("embed", "code_ids")

#: full state gathered to the main process's CPU memory (other processes get an empty dict)
_FULL_ON_MAIN = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded as units of their own (inside the root unit): the layers of the
    outermost stacks of repeated layers, which is where a model's parameters and activations
    are, and the modules that ask for it (`fsdp_unit = True`). A stack is a `ModuleList` or
    `Sequential` of at least two composite modules of one class (transformer or residual
    blocks; not a list of norms or projections, which would make units too small to pay for
    their gathers); a layer given as a `ModuleList` of parts (`[attention, feed-forward]`)
    makes a unit of each part, as a list has no `forward` to gather it."""
    units: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if getattr(child, "fsdp_unit", False):
                units.append(child)
            elif isinstance(child, (nn.ModuleList, nn.Sequential)) and _is_stack(child):
                for layer in child.children():
                    parts = layer.children() if isinstance(layer, nn.ModuleList) else [layer]
                    units.extend(part for part in parts if _has_parameters(part))
            else:
                visit(child)

    visit(model)
    return units


def _is_stack(container: nn.Module) -> bool:
    layers = list(container.children())
    return (
        len(layers) >= 2
        and len({type(layer) for layer in layers}) == 1
        and all(any(True for _ in layer.children()) for layer in layers)
    )


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def shard(model: nn.Module, device: torch.device, num_processes: int) -> nn.Module:
    """Shard `model` over every process (in place: the module becomes an `FSDPModule`, its
    parameters `DTensor`s), with the main process's weights: each process initialised its
    own, and `fully_shard`, unlike DDP, does not broadcast them. A collective."""
    model.to(device)
    for tensor in model.state_dict().values():
        torch.distributed.broadcast(tensor, src=0)
    mesh = init_device_mesh(device.type, (num_processes,))
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    for name in FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    return model


def plain_copy(model: nn.Module) -> nn.Module:
    """An unsharded CPU copy of `model` (taken before sharding, on the main process), into
    which full state is loaded to be saved exactly as a DDP run saves it (tied weights once)."""
    return copy.deepcopy(model).to("cpu")


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The full weights of a sharded model, on the main process's CPU. A collective."""
    return get_model_state_dict(model, options=_FULL_ON_MAIN)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The full optimizer state (keyed by parameter name), on the main process's CPU. A
    collective."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL_ON_MAIN)


def load_optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a full optimizer state (every process read it from the checkpoint) into the
    optimizer of the sharded `model`: each process keeps its shard."""
    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )
