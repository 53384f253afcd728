"""A tiny recipe used to test the engine in-process (no plugin install needed).

Tokens are 8 vectors of 4 features; masked ones are replaced by a learned mask token; a linear
decoder predicts the originals; MSE on masked tokens. Dropout and random augmentation make the
test of exact resumption meaningful (both consume RNG state).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omnimask import (
    LOSS_WEIGHT,
    Decoder,
    Encoder,
    MaskedModel,
    Recipe,
    RecipeConfig,
    Target,
    Tokens,
)
from omnimask.data import BadSampleError, check_data_path
from omnimask.shards import open_shard_set
from torch import Tensor, nn
from torch.utils.data import Dataset


class ToyData(Dataset):
    """64 fixed token sets, with noise drawn at each access; shardable (`omnimask.shards`)."""

    record_kind = "toy.values/1"

    def __init__(
        self, bad: tuple[int, ...] = (), nan: tuple[int, ...] = (), delay: float = 0.0
    ) -> None:
        self.values = torch.randn(64, 8, 4, generator=torch.Generator().manual_seed(1))
        self.bad, self.nan, self.delay = bad, nan, delay

    def __len__(self) -> int:
        return len(self.values)

    def record(self, index: int) -> dict[str, Any]:
        if index in self.bad:
            raise BadSampleError(f"toy/{index}.npy", "corrupt")
        return {"values": self.values[index].numpy(), "index": index}

    def sample(self, record: dict[str, Any]) -> dict[str, Tensor]:
        time.sleep(self.delay)  # lets a test kill the run at a known step
        values = torch.from_numpy(record["values"]) + 0.01 * torch.randn(8, 4)  # augmentation
        if record["index"] in self.nan:
            values = values * float("nan")
        return {"values": values}

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.sample(self.record(index))


class LabelledToyData(Dataset):
    """Two clusters of token sets (label 0 / 1), for `omnimask eval`."""

    def __init__(self, size: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(size) % 2
        centres = torch.tensor([-1.0, 1.0])[self.labels].view(size, 1, 1)
        self.values = centres + 0.5 * torch.randn(size, 8, 4, generator=generator)

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"values": self.values[index], "label": self.labels[index]}


class ToyTokenizer(nn.Module):
    def forward(self, batch: dict) -> Tokens:
        values = batch["values"]
        return Tokens(values=values, grid=(values.shape[1],))


class HalfMasker(nn.Module):
    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        noise = torch.rand(tokens.batch_size, tokens.num_tokens, generator=generator)
        order = noise.argsort(1)
        mask = torch.zeros_like(noise, dtype=torch.bool)
        mask.scatter_(1, order[:, : tokens.num_tokens // 2], True)
        return mask


class RaggedMasker(nn.Module):
    """Hides 1 to N - 1 tokens, a different number per sample: a per-token mean over the batch
    then weighs samples unequally, which is what `LOSS_WEIGHT` is for."""

    def forward(self, tokens: Tokens, generator: torch.Generator) -> Tensor:
        rows = []
        for _ in range(tokens.batch_size):
            count = int(torch.randint(1, tokens.num_tokens, (1,), generator=generator))
            order = torch.rand(tokens.num_tokens, generator=generator).argsort()
            rows.append(
                torch.zeros(tokens.num_tokens, dtype=torch.bool).index_fill(0, order[:count], True)
            )
        return torch.stack(rows)


class ToyBlock(nn.Module):
    """A residual layer: `model.depth` of them make a stack of repeated layers, which FSDP
    shards one by one (`omnimask.engine.fsdp`)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        return x + torch.tanh(self.linear(x))


class ToyEncoder(Encoder):
    def __init__(
        self, width: int, dropout: float, activation: str = "gelu", depth: int = 0
    ) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(4))
        act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.body = nn.Sequential(nn.Linear(4, width), act, nn.Dropout(dropout))
        self.blocks = nn.ModuleList(ToyBlock(width) for _ in range(depth))

    def forward(self, tokens: Tokens, mask: Tensor) -> Tensor:
        values = torch.where(mask.unsqueeze(-1), self.mask_token, tokens.values)
        return self.forward_blocks(self.body(values))

    def forward_features(self, tokens: Tokens) -> Tensor:
        return self.forward_blocks(self.body(tokens.values))

    def forward_blocks(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class ToyDecoder(Decoder):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.head = nn.Linear(width, 4)

    def forward(self, latent: Tensor, tokens: Tokens, mask: Tensor) -> Tensor:
        return self.head(latent)


class ToyTarget(Target):
    def __init__(self, weighted: bool = False) -> None:
        super().__init__()
        self.weighted = weighted

    def forward(self, batch: dict, tokens: Tokens) -> Tensor:
        return tokens.values

    def loss(self, prediction: Tensor, target: Tensor, mask: Tensor) -> dict[str, Tensor]:
        per_token = (prediction - target).pow(2).mean(-1)
        losses = {"loss": (per_token * mask).sum() / mask.sum()}
        if self.weighted:
            losses[LOSS_WEIGHT] = mask.sum().float()
        return losses


@dataclass
class ToyModelConfig:
    width: int = 16
    dropout: float = 0.1
    activation: str = "gelu"  # gelu | relu (a large lr kills every ReLU: a collapsed encoder)
    ragged: bool = False  # hide a different number of tokens per sample (`RaggedMasker`)
    weighted: bool = False  # return the masked-token count as `LOSS_WEIGHT`
    depth: int = 0  # residual layers after the first (`ToyBlock`)


@dataclass
class ToyConfig(RecipeConfig):
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    bad: tuple[int, ...] = ()
    nan: tuple[int, ...] = ()
    delay: float = 0.0


def demo() -> ToyConfig:
    config = ToyConfig()
    config.train.steps = 12
    config.train.batch_size = 8
    config.train.lr = 1e-2
    config.train.warmup_steps = 2
    config.train.checkpoint_every = 4
    config.train.log_every = 1  # the engine tests compare losses step by step
    config.train.progress = False
    return config


class ToyRecipe(Recipe):
    name = "toy/mim"
    config_class = ToyConfig
    presets = {"demo": demo}

    def build_model(self, config: ToyConfig) -> MaskedModel:
        width = config.model.width
        if width <= 0:
            raise ValueError(f"model.width must be positive, got {width}")
        return MaskedModel(
            ToyTokenizer(),
            RaggedMasker() if config.model.ragged else HalfMasker(),
            ToyEncoder(width, config.model.dropout, config.model.activation, config.model.depth),
            ToyDecoder(width),
            ToyTarget(config.model.weighted),
        )

    def build_dataset(self, config: ToyConfig) -> Dataset:
        data = ToyData(tuple(config.bad), tuple(config.nan), config.delay)
        shards = open_shard_set(config.data.path, ToyData.record_kind, config.data.shard_cache)
        if shards is not None:
            return shards.dataset(data.sample)
        if config.data.path is not None:
            check_data_path(config.data.path, ("*.npy",))
        return data

    def build_eval_datasets(self, config: ToyConfig, path: str | None = None):
        return LabelledToyData(40, seed=2), LabelledToyData(20, seed=3)

    def visualize(self, model: MaskedModel, config: ToyConfig, batch: dict, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        output = model.predict(batch, torch.Generator().manual_seed(0))
        figure, axes = plt.subplots(1, 3, figsize=(6, 2))
        for axis, (title, image) in zip(
            axes,
            [
                ("original", output.target[0]),
                ("masked", output.target[0] * ~output.mask[0].unsqueeze(-1)),
                ("reconstruction", output.prediction[0]),
            ],
        ):
            axis.imshow(image.detach().numpy())
            axis.set_title(title)
        figure.savefig(path)
        plt.close(figure)
        return path
