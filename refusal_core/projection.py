"""2-D and 3-D maps of residual-stream representations (PCA or UMAP), for drawing only.

A :class:`Projection` is fitted once on the representations of a layer and can then place
further points in the same map with :meth:`Projection.transform`; the dashboard uses this
to draw SOM neuron weights over the prompts they were trained on.

Preprocessing is *centring only*: the mean of the fitted points is subtracted and nothing
is rescaled. Residual streams have a few dimensions with very large activations, and the
refusal directions are differences of raw means; dividing every dimension by its spread
would draw a geometry that neither the DIM nor the SOM directions live in.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

from refusal_core.errors import UserError

__all__ = ["Projection", "ProjectionError", "fit_projection", "warm_up_umap"]

Method = Literal["pca", "umap"]
METHODS: tuple[str, ...] = ("pca", "umap")


class ProjectionError(UserError, ValueError):
    """The points cannot be projected as asked; the message says how to fix it."""


@dataclass(frozen=True, eq=False)
class Projection:
    """A fitted map from ``d``-dimensional points to ``n_components`` coordinates.

    ``embedding`` is ``[n_points, n_components]`` for the fitted points; ``mean`` ``[d]`` is
    the centre that was subtracted; ``explained_variance_ratio`` ``[n_components]`` is set
    for PCA (fraction of the centred points' total variance per axis) and None for UMAP.
    """

    method: str
    n_components: int
    embedding: np.ndarray
    mean: np.ndarray
    explained_variance_ratio: np.ndarray | None
    estimator: object

    @property
    def d_model(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, points: np.ndarray) -> np.ndarray:
        """Place ``points`` ``[m, d]`` in the fitted map: ``[m, n_components]``."""
        matrix = _as_matrix(points, "points to transform")
        if matrix.shape[1] != self.d_model:
            raise ProjectionError(
                f"These points have width {matrix.shape[1]} but the projection was fitted on width {self.d_model}; "
                "project points from the same model and layer."
            )
        return np.asarray(self.estimator.transform(matrix - self.mean), dtype=np.float64)

    def axis_labels(self) -> list[str]:
        """Axis titles, with the explained variance for PCA (``PC1 (41.2%)``)."""
        if self.explained_variance_ratio is None:
            return [f"UMAP{i + 1}" for i in range(self.n_components)]
        return [f"PC{i + 1} ({ratio:.1%})" for i, ratio in enumerate(self.explained_variance_ratio)]


def _as_matrix(points: np.ndarray, what: str) -> np.ndarray:
    matrix = np.asarray(points, dtype=np.float64)
    if matrix.ndim != 2:
        raise ProjectionError(f"The {what} must be a 2-D array [n_points, d], got shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ProjectionError(f"The {what} contain NaN or infinite values; recompute the activations in float32.")
    return matrix


def _check_request(matrix: np.ndarray, method: str, n_components: int) -> None:
    if method not in METHODS:
        raise ProjectionError(f"Unknown projection method {method!r}; use one of {', '.join(METHODS)}.")
    if n_components not in (2, 3):
        raise ProjectionError(f"n_components must be 2 or 3, got {n_components!r}.")
    # UMAP's spectral start and PCA's axes both need more points than axes.
    needed = n_components + 2
    if matrix.shape[0] < needed:
        raise ProjectionError(
            f"A {n_components}-D {method.upper()} map needs at least {needed} points, got {matrix.shape[0]}; "
            "use more prompts."
        )
    if matrix.shape[1] < n_components:
        raise ProjectionError(f"Points of width {matrix.shape[1]} cannot be mapped to {n_components} dimensions.")


def _fit_pca(centred: np.ndarray, n_components: int, seed: int):
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, svd_solver="full", random_state=seed)
    embedding = pca.fit_transform(centred)
    return pca, embedding, np.asarray(pca.explained_variance_ratio_, dtype=np.float64)


# umap-learn's modules whose numba kernels a fit compiles.
_UMAP_KERNEL_MODULES = ("umap.umap_", "umap.layouts", "umap.distances", "umap.sparse", "umap.utils", "umap.spectral")
_UMAP_IMPORT_LOCK = threading.Lock()
_umap_cached = False


def _import_umap():
    """Import umap-learn with numba's on-disk cache turned on for its kernels.

    umap-learn marks one of its numba kernels ``cache=True`` (pynndescent, which it uses,
    marks most of its own), so every new process compiled the rest again before its first
    map, most of that map's time. ``Dispatcher.enable_caching`` is what
    ``cache=True`` does; called before a kernel's first compilation it makes numba write
    the machine code next to umap's sources (``__pycache__``, or ``NUMBA_CACHE_DIR`` when set)
    and load it in later processes. numba checks the source file's timestamp and its own
    version, so an upgraded umap-learn recompiles rather than using stale code.
    """
    global _umap_cached
    try:
        import umap
        from numba.core.registry import CPUDispatcher
    except ImportError as err:  # pragma: no cover - umap-learn is an engine dependency
        raise ProjectionError("UMAP needs the umap-learn package: pip install umap-learn") from err
    with _UMAP_IMPORT_LOCK:
        if not _umap_cached:
            for name in _UMAP_KERNEL_MODULES:
                module = importlib.import_module(name)
                for kernel in vars(module).values():
                    if isinstance(kernel, CPUDispatcher) and kernel.__module__ == name:
                        kernel.enable_caching()
            _umap_cached = True
    return umap


def warm_up_umap() -> None:
    """Fit one tiny UMAP map, so that numba compiles (or loads from its disk cache) every
    kernel a map needs: set-up calls this once, and the dashboard at start in the background.
    The compiled code does not depend on the number or width of the points."""
    points = np.random.default_rng(0).normal(size=(40, 16))
    fit_projection(points, "umap", 2, seed=0)


def _fit_umap(centred: np.ndarray, n_components: int, seed: int, n_neighbors: int, min_dist: float):
    umap = _import_umap()
    # UMAP cannot look at more neighbours than there are other points.
    neighbours = max(2, min(int(n_neighbors), centred.shape[0] - 1))
    # A fixed random_state makes UMAP deterministic (it then runs single-threaded).
    reducer = umap.UMAP(
        n_components=n_components,
        n_neighbors=neighbours,
        min_dist=float(min_dist),
        random_state=seed,
        n_jobs=1,
        init="spectral",
    )
    reducer.fit(centred)
    return reducer, np.asarray(reducer.embedding_, dtype=np.float64), None


def fit_projection(
    points: np.ndarray,
    method: Method = "pca",
    n_components: int = 2,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
) -> Projection:
    """Fit a PCA or UMAP map of ``points`` ``[n, d]`` (centred, not scaled).

    ``seed`` fixes UMAP's layout (and PCA's solver, which is exact anyway); ``n_neighbors``
    is clipped to ``n - 1`` for small sets; ``n_neighbors`` and ``min_dist`` are ignored by PCA.
    """
    matrix = _as_matrix(points, "points to project")
    _check_request(matrix, method, n_components)
    mean = matrix.mean(axis=0)
    centred = matrix - mean
    if method == "pca":
        estimator, embedding, ratio = _fit_pca(centred, n_components, seed)
    else:
        estimator, embedding, ratio = _fit_umap(centred, n_components, seed, n_neighbors, min_dist)
    return Projection(
        method=method,
        n_components=n_components,
        embedding=np.asarray(embedding, dtype=np.float64),
        mean=mean,
        explained_variance_ratio=ratio,
        estimator=estimator,
    )
