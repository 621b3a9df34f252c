"""Clustering of per-prompt refusal directions into a finite family, in cosine geometry.

Directions are compared by angle, not length (a prompt's gradient or representation
offset can be large or small and still point the same way), so vectors are L2-normalised
before clustering and silhouettes use the cosine distance. When categories are known,
the clusters are compared with them: does the model refuse different kinds of request
through different directions?
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.directions.per_prompt import gradient_directions, representation_directions
from refusal_core.directions.registry import DirectionMethod, FitInput, register, setting
from refusal_core.errors import SettingsError

__all__ = [
    "METHOD",
    "METHODS",
    "SOURCES",
    "ClusterResult",
    "ClusterSettings",
    "cluster_direction_set",
    "cluster_directions",
    "fit",
]

METHODS = ("kmeans", "agglomerative")
SOURCES = ("representation", "gradient")


@dataclass(frozen=True)
class ClusterResult:
    """A partition of ``n`` directions into ``k`` clusters.

    ``labels`` ``[n]`` cluster of each direction; clusters are numbered by size, largest
    first (ties by first member), so the numbering does not depend on the algorithm's.
    ``centroids`` ``[k, d]`` float32: the mean of the members' unit vectors, rescaled to the
    members' mean norm, so a centroid points along the cluster's mean direction and has the
    magnitude of a typical member (the mean of unit vectors alone shrinks as the members
    spread, which would make it a weaker direction for steering or ablation).
    ``silhouette`` mean cosine silhouette (NaN where undefined: one cluster, or one member
    each); ``silhouettes`` the score of every k tried when k was chosen automatically.
    ``contingency`` ``{cluster: {category: count}}``, ``adjusted_rand`` and
    ``normalized_mutual_info`` compare the clusters with the categories, when given.
    """

    labels: torch.Tensor
    k: int
    method: str
    centroids: torch.Tensor
    sizes: tuple[int, ...]
    silhouette: float
    seed: int
    silhouettes: dict[int, float] = field(default_factory=dict)
    contingency: dict[int, dict[str, int]] | None = None
    adjusted_rand: float | None = None
    normalized_mutual_info: float | None = None

    def dominant_category(self, cluster: int) -> str | None:
        """The most frequent category in ``cluster`` (ties: alphabetical), or None."""
        if self.contingency is None or not self.contingency.get(cluster):
            return None
        counts = self.contingency[cluster]
        return min(counts, key=lambda name: (-counts[name], name))


def _unit_rows(vectors: torch.Tensor) -> np.ndarray:
    """``[n, d]`` float64 unit vectors; rejects shapes, non-finite and zero rows."""
    if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2:
        shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
        raise ValueError(f"Directions must be an [n, d] tensor, got {shape}.")
    if vectors.shape[0] < 2:
        raise SettingsError(f"Clustering needs at least 2 directions, got {vectors.shape[0]}.")
    data = vectors.detach().cpu().double()
    if not torch.isfinite(data).all():
        raise ValueError("Directions contain NaN or infinite values; recompute them.")
    norms = data.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        raise ValueError("A direction is zero and has no angle; drop zero vectors before clustering.")
    return (data / norms).numpy()


def _fit(unit: np.ndarray, k: int, method: str, seed: int) -> np.ndarray:
    """Raw labels ``[n]`` from the chosen algorithm.

    k-means on unit vectors: the squared Euclidean distance of unit vectors is
    ``2 - 2 cos``, so nearest-centre assignment follows the angle (centres are means, not
    renormalised; for assignment this is the usual, close approximation of spherical
    k-means). Agglomerative clustering uses the cosine distance with average linkage,
    because Ward linkage only works with Euclidean distances.
    """
    from sklearn.cluster import AgglomerativeClustering, KMeans

    if method == "kmeans":
        return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(unit)
    return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage="average").fit_predict(unit)


def _canonical(labels: np.ndarray) -> np.ndarray:
    """Renumber clusters by size, descending; ties by the index of the first member."""
    clusters = np.unique(labels)
    key = {c: (-int((labels == c).sum()), int(np.argmax(labels == c))) for c in clusters}
    order = sorted(clusters, key=lambda c: key[c])
    mapping = {old: new for new, old in enumerate(order)}
    return np.array([mapping[c] for c in labels], dtype=np.int64)


def _silhouette(unit: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import silhouette_score

    n_clusters = len(np.unique(labels))
    if not 2 <= n_clusters <= len(labels) - 1:
        return math.nan
    return float(silhouette_score(unit, labels, metric="cosine"))


def _choose_k(unit: np.ndarray, method: str, k_range: Sequence[int], seed: int) -> tuple[int, dict[int, float]]:
    """The k in ``k_range`` (2 <= k < n) with the best cosine silhouette; ties: smaller k."""
    candidates = sorted({int(k) for k in k_range if 2 <= int(k) < len(unit)})
    if not candidates:
        raise SettingsError(f"k_range {list(k_range)} has no k with 2 <= k < {len(unit)} (the number of directions).")
    scores = {k: _silhouette(unit, _fit(unit, k, method, seed)) for k in candidates}
    best = max(candidates, key=lambda k: (np.nan_to_num(scores[k], nan=-2.0), -k))
    return best, scores


def _centroids(vectors: torch.Tensor, unit: np.ndarray, labels: np.ndarray, k: int) -> torch.Tensor:
    """``[k, d]`` float32: normalised mean unit vector times the members' mean norm."""
    norms = vectors.detach().cpu().double().norm(dim=1).numpy()
    rows = []
    for cluster in range(k):
        members = labels == cluster
        mean_unit = unit[members].mean(axis=0)
        length = np.linalg.norm(mean_unit)
        # Exactly opposite members cancel; keep the zero so the caller sees it fail loudly.
        direction = mean_unit / length if length > 0 else mean_unit
        rows.append(direction * norms[members].mean())
    return torch.from_numpy(np.stack(rows)).float()


def _alignment(labels: np.ndarray, categories: Sequence[str]) -> tuple[dict[int, dict[str, int]], float, float]:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    table: dict[int, dict[str, int]] = {}
    for cluster, category in zip(labels.tolist(), categories):
        row = table.setdefault(int(cluster), {})
        row[str(category)] = row.get(str(category), 0) + 1
    names = [str(c) for c in categories]
    return (
        dict(sorted(table.items())),
        float(adjusted_rand_score(names, labels)),
        float(normalized_mutual_info_score(names, labels)),
    )


def cluster_directions(
    vectors: torch.Tensor,
    k: int | None = None,
    method: str = "kmeans",
    k_range: Sequence[int] = range(2, 9),
    seed: int = 0,
    categories: Sequence[str] | None = None,
) -> ClusterResult:
    """Cluster ``[n, d]`` directions by angle into ``k`` groups (``k=None``: best silhouette).

    ``method`` is ``"kmeans"`` (on L2-normalised vectors, seeded) or ``"agglomerative"``
    (cosine distance, average linkage). ``categories`` (one per direction) adds the
    contingency table, adjusted Rand index and normalised mutual information.
    """
    if method not in METHODS:
        raise SettingsError(f"Unknown clustering method {method!r}; use one of {', '.join(METHODS)}.")
    unit = _unit_rows(vectors)
    n = len(unit)
    if categories is not None and len(categories) != n:
        raise ValueError(f"{len(categories)} categories for {n} directions; they must align.")
    silhouettes: dict[int, float] = {}
    if k is None:
        k, silhouettes = _choose_k(unit, method, k_range, seed)
    elif isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise SettingsError(
            f"k must be an integer from 1 to the number of directions ({n}), got {k!r}; choose a k in that range (or use more prompts)."
        )
    labels = _canonical(_fit(unit, k, method, seed))
    found = int(labels.max()) + 1  # k-means can return fewer clusters on duplicate points.
    contingency, ari, nmi = _alignment(labels, categories) if categories is not None else (None, None, None)
    return ClusterResult(
        labels=torch.from_numpy(labels),
        k=found,
        method=method,
        centroids=_centroids(vectors, unit, labels, found),
        sizes=tuple(int((labels == c).sum()) for c in range(found)),
        silhouette=_silhouette(unit, labels),
        seed=seed,
        silhouettes=silhouettes,
        contingency=contingency,
        adjusted_rand=ari,
        normalized_mutual_info=nmi,
    )


def cluster_direction_set(result: ClusterResult, provenance: dict) -> DirectionSet:
    """One direction per cluster centroid, ``cluster/{c}``.

    ``provenance`` describes the clustered directions (model, layer, position, data hash
    and their ``method``, kept as ``source_method``); each entry adds the member count,
    the dominant category and the clustering parameters.
    """
    params = {"k": result.k, "method": result.method, "seed": result.seed, "silhouette": result.silhouette}
    records = tuple(
        {
            **provenance,
            "method": "cluster",
            "source_method": provenance.get("method"),
            "cluster": c,
            "members": result.sizes[c],
            "dominant_category": result.dominant_category(c),
            "params": {**provenance.get("params", {}), **params},
        }
        for c in range(result.k)
    )
    meta = {
        **provenance,
        "method": "cluster",
        "source_method": provenance.get("method"),
        "silhouettes": {str(k): v for k, v in result.silhouettes.items()},
        "adjusted_rand": result.adjusted_rand,
        "normalized_mutual_info": result.normalized_mutual_info,
    }
    return DirectionSet(
        vectors=result.centroids,
        names=tuple(f"cluster/{c}" for c in range(result.k)),
        provenance=records,
        meta=meta,
    )


@dataclass(frozen=True)
class ClusterSettings:
    """Per-prompt directions (Park) at one layer, clustered by angle into a finite family."""

    source: str = setting(
        "representation",
        "per-prompt direction: representation minus the harmless centroid, "
        "or the gradient of a refusal phrase's log-likelihood",
        choices=SOURCES,
    )
    method: str = setting("kmeans", "clustering algorithm", choices=METHODS)
    k: int | None = setting(None, "number of clusters (default: best silhouette)", minimum=1)
    seed: int = setting(0, "k-means seed", minimum=0)


def fit(data: FitInput, settings: ClusterSettings) -> DirectionSet:
    """One direction per cluster centroid of the harmful prompts' own directions."""
    if settings.source == "gradient":
        vectors = gradient_directions(
            data.loaded,
            data.harmful.instructions,
            data.layer,
            position=data.position,
            chat=data.chat,
            progress=data.progress("gradients"),
        )
    else:
        vectors = representation_directions(*data.layer_points())
    categories = [c or "none" for c in data.harmful.categories]
    result = cluster_directions(
        vectors, k=settings.k, method=settings.method, seed=settings.seed, categories=categories
    )
    provenance = data.provenance(f"per_prompt_{settings.source}", at_layer=True)
    return cluster_direction_set(result, provenance)


def summary(directions: DirectionSet) -> tuple[dict, list[str]]:
    meta, first = directions.meta, directions.provenance[0]
    params = first["params"]
    payload = {
        "k": len(directions),
        "sizes": [p["members"] for p in directions.provenance],
        "silhouette": params["silhouette"],
        "adjusted_rand": meta["adjusted_rand"],
        "normalized_mutual_info": meta["normalized_mutual_info"],
        "dominant_categories": [p.get("dominant_category") for p in directions.provenance],
    }
    source = str(meta["source_method"]).removeprefix("per_prompt_")
    lines = [
        f"{params['method']} on {source} directions at layer {meta['layer']}: k={payload['k']}, cosine silhouette {payload['silhouette']:.3f}",
        f"alignment with harm categories: ARI {payload['adjusted_rand']:.3f}, NMI {payload['normalized_mutual_info']:.3f}",
    ]
    lines += [
        f"  {name:12s} {size:4d} prompts, mostly {category}"
        for name, size, category in zip(directions.names, payload["sizes"], payload["dominant_categories"])
    ]
    return payload, lines


METHOD = register(
    DirectionMethod(
        name="cluster",
        title="Clustered per-prompt directions",
        help="cluster input-specific directions (Park)",
        settings=ClusterSettings,
        fit=fit,
        reads="layer",
        summary=summary,
    )
)
