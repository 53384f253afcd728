"""Frozen-feature evaluation: a linear probe and kNN on `MaskedModel.embed` features.

scikit-learn does the fitting (standardised multinomial logistic regression; cosine kNN). The
same model at its random initialisation is scored too, so a run shows what pretraining bought.
"""

from __future__ import annotations

import json
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

from omnimask.model import MaskedModel
from omnimask.recipe import Recipe


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
    train_set: Dataset,
    test_set: Dataset,
    k: int = 20,
    name: str = "model",
) -> dict[str, float]:
    train = extract_features(model, recipe, train_set, description=f"{name}: train features")
    test = extract_features(model, recipe, test_set, description=f"{name}: test features")
    return {
        "linear_probe_accuracy": linear_probe_accuracy(train, test),
        "knn_accuracy": knn_accuracy(train, test, k),
        "feature_dim": float(train[0].shape[1]),
    }


def random_subset(dataset: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most `limit` samples of `dataset`, drawn without replacement under `seed` and kept in
    dataset order, so a large labelled set can be scored quickly and the same way every time."""
    size = len(dataset)  # type: ignore[arg-type]
    if limit is None or limit >= size:
        return dataset
    chosen = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:limit]
    return Subset(dataset, sorted(chosen.tolist()))


def evaluate_run(
    run_dir: Path, data: str | None = None, k: int = 20, limit: int | None = None
) -> dict[str, Any]:
    """Score a run's encoder and its random initialisation; writes `eval.json` in the run.

    `limit` caps the samples taken from each of the train and test splits."""
    from omnimask.runs import load_run

    run = load_run(run_dir)
    train_set, test_set = run.recipe.build_eval_datasets(run.config, data)
    seed = run.config.train.seed
    train_set, test_set = (
        random_subset(train_set, limit, seed),
        random_subset(test_set, limit, seed + 1),
    )
    torch.manual_seed(run.config.train.seed)
    baseline = run.recipe.build_model(run.config)
    result = {
        "run": str(run.run_dir),
        "step": run.step,
        "train_samples": len(train_set),  # type: ignore[arg-type]
        "test_samples": len(test_set),  # type: ignore[arg-type]
        "pretrained": evaluate_model(run.model, run.recipe, train_set, test_set, k, "pretrained"),
        "random_init": evaluate_model(baseline, run.recipe, train_set, test_set, k, "random init"),
    }
    (run.run_dir / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
