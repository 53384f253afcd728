"""`omnimask eval`: a linear probe and kNN on frozen `MaskedModel.embed` features, and end-to-end
fine-tuning (`omnimask.finetune`).

scikit-learn does the probe fitting (standardised multinomial logistic regression; cosine kNN).
The same architecture at its random initialisation is scored with the same protocols, so a run
shows what pretraining bought.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from omnimask.data import DataPathError
from omnimask.model import MaskedModel
from omnimask.recipe import Recipe, RecipeConfig

#: `omnimask eval --protocol` choices; linear and knn are the default.
PROTOCOLS = ("linear", "knn", "finetune")


class EvalDataError(ValueError):
    """The run's recipe has no labelled data to evaluate on, or the labelled data is unusable."""


@torch.no_grad()
def extract_features(
    model: MaskedModel,
    recipe: Recipe,
    dataset: Dataset,
    batch_size: int = 64,
    description: str = "features",
) -> tuple[np.ndarray, np.ndarray]:
    """(features `[n, D]`, labels `[n]`) of a labelled dataset, in dataset order."""
    device = next(model.parameters()).device
    model.eval()
    features, labels = [], []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=recipe.collate)
    for batch in tqdm(loader, desc=description, unit="batch", leave=False):
        labels.append(torch.as_tensor(batch["label"]).cpu())
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        features.append(model.embed(batch).float().cpu())
    return torch.cat(features).numpy(), torch.cat(labels).numpy()


def linear_probe_accuracy(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> float:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    probe.fit(*train)
    return float(probe.score(*test))


def knn_accuracy(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], k: int = 20
) -> float:
    k = max(1, min(k, len(train[0])))
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
    knn.fit(*train)
    return float(knn.score(*test))


def evaluate_model(
    model: MaskedModel,
    recipe: Recipe,
    config: RecipeConfig,
    train_set: Dataset,
    test_set: Dataset,
    protocols: Sequence[str] = ("linear", "knn"),
    k: int = 20,
    name: str = "model",
) -> dict[str, float]:
    """The figures of `protocols` for one model; fine-tuning works on a copy of it."""
    from omnimask.finetune import finetune_accuracy

    result: dict[str, float] = {}
    train_labels = None
    if "linear" in protocols or "knn" in protocols:
        train = extract_features(model, recipe, train_set, description=f"{name}: train features")
        test = extract_features(model, recipe, test_set, description=f"{name}: test features")
        train_labels = train[1]
        if "linear" in protocols:
            result["linear_probe_accuracy"] = linear_probe_accuracy(train, test)
        if "knn" in protocols:
            result["knn_accuracy"] = knn_accuracy(train, test, k)
        result["feature_dim"] = float(train[0].shape[1])
    if "finetune" in protocols:
        labels = train_labels if train_labels is not None else dataset_labels(recipe, train_set)
        result["finetune_accuracy"] = finetune_accuracy(
            model, recipe, config.finetune, train_set, test_set,
            num_classes=int(labels.max()) + 1, seed=config.train.seed, name=name,
        )  # fmt: skip
    return result


def dataset_labels(recipe: Recipe, dataset: Dataset) -> np.ndarray:
    """Every label of a labelled dataset, in order (loads each sample once)."""
    loader = DataLoader(dataset, batch_size=64, collate_fn=recipe.collate)
    return torch.cat([torch.as_tensor(batch["label"]) for batch in loader]).numpy()


def random_subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most `limit` samples of `dataset`, drawn without replacement under `seed` and kept in
    dataset order, so a large labelled set can be scored quickly and the same way every time."""
    size = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= size:
        return dataset
    chosen = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, sorted(chosen.tolist()))


def labelled_datasets(
    recipe: Recipe, config: RecipeConfig, data: str | None
) -> tuple[Dataset, Dataset]:
    """The recipe's labelled (train, test) sets; one clear line where there are none."""
    layout = recipe.labelled_layout or "labelled data in the layout its plugin README gives"
    try:
        train_set, test_set = recipe.build_eval_datasets(config, data)
    except NotImplementedError:
        raise EvalDataError(
            f"recipe {recipe.name!r} has no embedded labelled data; pass --data with {layout}"
        ) from None
    except DataPathError as error:
        if data is None or "--data" in str(error):
            raise
        raise EvalDataError(f"{error} (--data expects {layout})") from None
    for split, dataset in (("train", train_set), ("test", test_set)):
        if len(dataset) == 0:  # type: ignore[arg-type]
            source = data or "the embedded labelled set"
            raise EvalDataError(f"{source} has no {split} samples; --data expects {layout}")
    return train_set, test_set


def initial_model(recipe: Recipe, config: RecipeConfig) -> MaskedModel:
    """The model a run of `config` started from, the random-init side of every comparison:
    built under process 0's seed, as `Engine.run` builds it (other processes start from process
    0's weights). The gap then measures pretraining alone, not also another random draw."""
    from omnimask.seeding import mix_seed

    torch.manual_seed(mix_seed(config.train.seed, 0))
    return recipe.build_model(config)


def evaluate_run(
    run_dir: Path,
    data: str | None = None,
    k: int = 20,
    limit: int | None = None,
    protocols: Sequence[str] = ("linear", "knn"),
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Score a run's encoder and its random initialisation with `protocols`; writes `eval.json`
    in the run.

    `protocols` are the core's (`PROTOCOLS`) and the recipe's own (`Recipe.protocols`).
    `limit` caps the samples taken from each of the train and test splits of the core's
    protocols. `overrides` set `finetune.*` or the recipe's `eval_sections` (nothing else: the
    rest of the config is the run's)."""
    from omnimask.config import EVAL_SECTIONS, ConfigError, apply_overrides
    from omnimask.runs import load_run

    run = load_run(run_dir)
    recipe = run.recipe
    known = (*PROTOCOLS, *recipe.protocols)
    unknown = [p for p in protocols if p not in known]
    if unknown:
        raise ConfigError(
            f"recipe {recipe.name!r} has no protocol {unknown[0]!r}; choose from {', '.join(known)}"
        )
    sections = (*EVAL_SECTIONS, *recipe.eval_sections)
    foreign = [o for o in overrides if o.split(".", 1)[0] not in sections]
    if foreign:
        allowed = ", ".join(f"{s}.*" for s in sections)
        raise ConfigError(
            f"eval takes {allowed} overrides only, got {foreign[0]!r}: the rest of the config is "
            "the run's"
        )
    config = apply_overrides(run.config, list(overrides)) if overrides else run.config
    seed = config.train.seed
    baseline = initial_model(recipe, config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = {"pretrained": run.model.to(device), "random_init": baseline.to(device)}
    result: dict[str, Any] = {
        "run": str(run.run_dir),
        "step": run.step,
        "protocols": list(protocols),
    }
    scored: dict[str, dict[str, float]] = {side: {} for side in models}
    core = [p for p in protocols if p in PROTOCOLS]
    if core:
        train_set, test_set = labelled_datasets(recipe, config, data)
        train_set, test_set = (
            random_subset(train_set, limit, seed),
            random_subset(test_set, limit, seed + 1),
        )
        result["train_samples"] = len(train_set)  # type: ignore[arg-type]
        result["test_samples"] = len(test_set)  # type: ignore[arg-type]
        for side, model in models.items():
            scored[side] |= evaluate_model(
                model, recipe, config, train_set, test_set, core, k, name=side.replace("_", " ")
            )
    for protocol in (p for p in protocols if p not in PROTOCOLS):
        for side, model in models.items():
            figures = recipe.evaluate_protocol(
                protocol, model, config, data, name=side.replace("_", " ")
            )
            scored[side] |= {f"{protocol}/{key}": value for key, value in figures.items()}
    result |= scored
    own = any(p in recipe.protocols for p in protocols)
    for section in sections:  # the settings the protocols ran with
        if ("finetune" in protocols) if section == "finetune" else own:
            result[section] = dataclasses.asdict(getattr(config, section))
    (run.run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
