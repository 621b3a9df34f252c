"""The manifold under an intervention: activations recomputed with the intervention in place,
placed in the map fitted on the unmodified activations, and the harmful-harmless separation
before and after.

The map is never refitted on the intervened points: a PCA or UMAP fitted on the originals
places both sets of points in one frame, so a point's move is the intervention's effect and
not a change of axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from refusal_core.activations.cache import content_key, entry_path, load_entry, save_entry, tensor_digest
from refusal_core.activations.extract import Activations, activation_key, default_positions, extract_activations
from refusal_core.activations.separation import stacked_points
from refusal_core.interventions.hooks import apply_intervention
from refusal_core.interventions.spec import Intervention
from refusal_core.model.families import model_lock
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.projection import Projection, fit_projection
from refusal_core.prompts.chat import ChatFormat

__all__ = ["LayerShift", "Separation", "intervened_activations", "intervention_key", "layer_shift", "separation"]


def intervention_key(intervention: Intervention) -> str:
    """A content key of what ``intervention`` does (its name is left out: it changes nothing)."""
    tensors = {
        name: value
        for name, value in (("ablate", intervention.ablate), ("actadd", intervention.actadd))
        if value is not None
    }
    return content_key(
        "intervention",
        tensor_digest(tensors) if tensors else "none",
        list(intervention.ablate_layers) if intervention.ablate_layers is not None else None,
        intervention.ablate_mode,
        intervention.actadd_layer,
        float(intervention.actadd_coeff),
    )


def intervened_activations(
    loaded: LoadedModel,
    instructions: Sequence[str],
    intervention: Intervention,
    positions: Sequence[int] | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
    use_cache: bool = True,
    progress: Progress | None = None,
) -> tuple[Activations, str | None]:
    """The activations of ``instructions`` with ``intervention`` in place, and a cache warning.

    The same layout as ``extract_activations`` (block inputs of every layer, then the last
    block's output). Cached under the unmodified activations' key and the intervention's:
    a second call with the same weights, prompts and intervention reads them back. A failed
    cache write does not lose the computed activations: they are returned with the warning.
    """
    if intervention.is_baseline:
        return extract_activations(loaded, instructions, positions, chat, batch_size, use_cache, progress), None
    if intervention.condition is not None:
        raise ValueError("A conditional intervention cannot be drawn on the manifold; choose an ablation or actadd.")
    chat = chat or ChatFormat()
    positions = tuple(positions) if positions is not None else default_positions(loaded.tokenizer, chat)
    instructions = tuple(instructions)
    with model_lock(loaded.model):
        key = content_key(
            "activations-under", activation_key(loaded, instructions, positions, chat), intervention_key(intervention)
        )
        path = entry_path("activations", key)
        cached = load_entry(path, {"key": key}) if use_cache else None
        if cached is not None:
            if progress:
                progress(len(instructions), len(instructions))
            return Activations(cached["acts"], positions, instructions, key, from_cache=True), None
        with apply_intervention(loaded.model, intervention):
            acts = extract_activations(
                loaded, instructions, positions, chat, batch_size, use_cache=False, progress=progress
            ).acts
    warning = None
    if use_cache:
        try:
            save_entry(path, {"acts": acts}, {"key": key, "model": loaded.spec})
        except OSError as err:
            warning = (
                f"The intervened activations were computed but could not be cached ({err}); they are shown anyway."
            )
    return Activations(acts, positions, instructions, key, from_cache=False), warning


@dataclass(frozen=True)
class Separation:
    """How far apart the harmful and harmless points are at one layer.

    ``dim_norm``: norm of the difference of the two means; ``probe_accuracy``: accuracy of
    a linear probe trained on the *unmodified* points (the same probe before and after, so
    a fall means the intervention moved the points across what the model's own geometry
    separated); ``cv_probe_accuracy``: a probe refitted on these points, cross-validated.
    """

    dim_norm: float
    probe_accuracy: float
    cv_probe_accuracy: float


def _probe(points: np.ndarray, labels: np.ndarray):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(points, labels)


def _cv_accuracy(points: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = int(min(5, labels.sum(), (1 - labels).sum()))
    if folds < 2:
        return float("nan")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(_probe(points, labels), points, labels, cv=splitter).mean())


def separation(points: np.ndarray, labels: np.ndarray, probe=None) -> Separation:
    """``Separation`` of ``points`` ``[n, d]`` with ``labels`` (1 harmful, 0 harmless)."""
    means = points[labels == 1].mean(0) - points[labels == 0].mean(0)
    probe = probe if probe is not None else _probe(points, labels)
    return Separation(
        dim_norm=float(np.linalg.norm(means)),
        probe_accuracy=float((probe.predict(points) == labels).mean()),
        cv_probe_accuracy=_cv_accuracy(points, labels),
    )


@dataclass(frozen=True)
class LayerShift:
    """Before and after at one layer: map coordinates, moves and separation.

    ``before`` and ``after`` are ``[n_harmful + n_harmless, n_components]`` in the map fitted
    on the unmodified points (harmful rows first). ``moved_residual`` is each prompt's
    distance moved in the residual stream, ``moved_map`` in the map.
    """

    layer: int
    position: int
    n_harmful: int
    projection: Projection
    before: np.ndarray
    after: np.ndarray
    moved_residual: np.ndarray
    moved_map: np.ndarray
    separation_before: Separation
    separation_after: Separation

    def mean_moves(self) -> dict[str, float]:
        """Mean distance moved by the harmful and the harmless prompts, residual and map."""
        n = self.n_harmful
        return {
            "harmful_residual": float(self.moved_residual[:n].mean()),
            "harmless_residual": float(self.moved_residual[n:].mean()),
            "harmful_map": float(self.moved_map[:n].mean()),
            "harmless_map": float(self.moved_map[n:].mean()),
        }

    def as_dict(self) -> dict:
        sep = {
            "before": vars(self.separation_before),
            "after": vars(self.separation_after),
        }
        return {
            "layer": self.layer,
            "position": self.position,
            "method": self.projection.method,
            "axes": list(self.projection.axis_labels()[:2]),
            "n_harmful": self.n_harmful,
            "before": self.before.tolist(),
            "after": self.after.tolist(),
            "moved": self.mean_moves(),
            "separation": sep,
        }


def layer_shift(
    before: tuple[Activations, Activations],
    after: tuple[Activations, Activations],
    layer: int,
    position: int = -1,
    method: str = "pca",
    n_components: int = 2,
    projection: Projection | None = None,
    seed: int = 0,
) -> LayerShift:
    """Place the intervened points of ``layer`` in the map of the unmodified ones.

    ``before`` and ``after`` are (harmful, harmless) activations of the same prompts without
    and with the intervention; ``projection`` (fitted on the unmodified points of this layer
    and position: its embedding is the "before" map) is reused when given, else fitted here.
    """
    points_before = stacked_points(*before, layer, position)
    points_after = stacked_points(*after, layer, position)
    if points_before.shape != points_after.shape:
        raise ValueError("Before and after must hold the same prompts; extract both from one prompt list.")
    projection = projection or fit_projection(points_before, method, n_components, seed=seed)
    n_harmful = int(before[0].acts.shape[0])
    labels = np.array([1] * n_harmful + [0] * (len(points_before) - n_harmful))
    probe = _probe(points_before, labels)
    if projection.embedding.shape[0] != len(points_before):
        raise ValueError("The projection was fitted on other points; fit it on this layer's unmodified points.")
    mapped_before = projection.embedding
    mapped_after = projection.transform(points_after)
    return LayerShift(
        layer=layer,
        position=position,
        n_harmful=n_harmful,
        projection=projection,
        before=np.asarray(mapped_before),
        after=np.asarray(mapped_after),
        moved_residual=np.linalg.norm(points_after - points_before, axis=1),
        moved_map=np.linalg.norm(mapped_after - mapped_before, axis=1),
        separation_before=separation(points_before, labels, probe),
        separation_after=separation(points_after, labels, probe),
    )
