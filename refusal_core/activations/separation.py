"""How well each layer separates harmful from harmless prompts: DIM norm, a cross-validated
linear probe and the silhouette, per block input.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from refusal_core.activations.extract import Activations
from refusal_core.progress import Progress

__all__ = ["LayerSeparation", "layer_points", "stacked_points", "layer_separation"]


def layer_points(
    harmful: Activations, harmless: Activations, layer: int, position: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n_harmful, d], [n_harmless, d])`` block inputs of ``layer`` at ``position``."""
    return harmful.block_input(layer, position), harmless.block_input(layer, position)


def stacked_points(harmful: Activations, harmless: Activations, layer: int, position: int) -> np.ndarray:
    """``[n_harmful + n_harmless, d]`` float64: the harmful block inputs, then the harmless ones."""
    return torch.cat(layer_points(harmful, harmless, layer, position)).double().numpy()


@dataclass(frozen=True)
class LayerSeparation:
    """How well each layer separates harmful from harmless prompts at one position.

    ``dim_norm[l]``: norm of the difference in means; ``probe_accuracy[l]``: mean
    cross-validated accuracy of a logistic-regression probe (NaN with too few prompts);
    ``silhouette[l]``: silhouette of the two sets (Euclidean, -1..1; higher = more apart).
    """

    position: int
    layers: tuple[int, ...]
    dim_norm: np.ndarray
    probe_accuracy: np.ndarray
    silhouette: np.ndarray
    folds: int


def _probe_accuracy(points: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if folds < 2:
        return float("nan")
    # The probe standardises features: unlike the plots, it should not be dominated by the
    # few dimensions with very large activations.
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, points, labels, cv=splitter).mean())


def layer_separation(
    harmful: Activations,
    harmless: Activations,
    position: int = -1,
    probe: bool = True,
    seed: int = 0,
    progress: Progress | None = None,
) -> LayerSeparation:
    """DIM norm, probe accuracy (NaN with ``probe=False``) and silhouette, for every block input.

    The probe dominates the cost (one cross-validated fit per layer); ``progress(done,
    total)`` is called after each layer.
    """
    from sklearn.metrics import silhouette_score

    layers = harmful.block_inputs  # the recorded block inputs (all unless --layers chose fewer)
    labels = np.array([1] * harmful.acts.shape[0] + [0] * harmless.acts.shape[0])
    folds = int(min(5, harmful.acts.shape[0], harmless.acts.shape[0])) if probe else 0
    norms, accuracies, silhouettes = [], [], []
    for done, layer in enumerate(layers, start=1):
        bad, good = layer_points(harmful, harmless, layer, position)
        points = torch.cat([bad, good]).double().numpy()
        norms.append(float((bad.double().mean(0) - good.double().mean(0)).norm()))
        accuracies.append(_probe_accuracy(points, labels, folds, seed))
        silhouettes.append(float(silhouette_score(points, labels)) if len(points) > 2 else float("nan"))
        if progress:
            progress(done, len(layers))
    return LayerSeparation(
        position=position,
        layers=tuple(layers),
        dim_norm=np.array(norms),
        probe_accuracy=np.array(accuracies),
        silhouette=np.array(silhouettes),
        folds=folds,
    )
