"""PCA and UMAP maps: shapes, a planted structure, transform consistency, determinism, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from refusal_core.projection import ProjectionError, fit_projection


def _planted(n: int = 60, d: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points on a 2-D plane (large spread) plus small isotropic noise; returns (points, plane basis)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(d, 2)))
    coords = rng.normal(size=(n, 2)) * np.array([10.0, 5.0])
    points = coords @ basis.T + 0.01 * rng.normal(size=(n, d)) + 3.0
    return points, basis


@pytest.mark.parametrize("n_components", [2, 3])
def test_pca_shapes_and_variance(n_components):
    points, _ = _planted()
    projection = fit_projection(points, "pca", n_components)
    assert projection.embedding.shape == (60, n_components)
    assert projection.transform(points[:5]).shape == (5, n_components)
    assert projection.explained_variance_ratio.shape == (n_components,)
    assert len(projection.axis_labels()) == n_components


def test_pca_recovers_planted_plane():
    points, basis = _planted()
    projection = fit_projection(points, "pca", 2)
    axes = projection.estimator.components_  # [2, d]
    # Both principal axes lie in the planted plane: projecting them onto it keeps their length.
    inside = np.linalg.norm(axes @ basis, axis=1)
    np.testing.assert_allclose(inside, 1.0, atol=1e-4)
    assert projection.explained_variance_ratio.sum() > 0.999
    assert projection.explained_variance_ratio[0] > projection.explained_variance_ratio[1]


def test_pca_centres_and_does_not_scale():
    points, _ = _planted()
    projection = fit_projection(points, "pca", 2)
    np.testing.assert_allclose(projection.mean, points.mean(0))
    np.testing.assert_allclose(projection.embedding.mean(0), 0.0, atol=1e-9)
    # Distances in the plane are kept (no per-dimension scaling).
    d_orig = np.linalg.norm(points[0] - points[1])
    d_map = np.linalg.norm(projection.embedding[0] - projection.embedding[1])
    assert d_map == pytest.approx(d_orig, rel=1e-3)


def test_pca_transform_of_training_points_equals_embedding():
    points, _ = _planted()
    projection = fit_projection(points, "pca", 3)
    np.testing.assert_allclose(projection.transform(points), projection.embedding, atol=1e-9)


def test_umap_is_deterministic_with_a_seed():
    points, _ = _planted(n=40, d=16)
    first = fit_projection(points, "umap", 2, seed=3, n_neighbors=10)
    second = fit_projection(points, "umap", 2, seed=3, n_neighbors=10)
    assert first.embedding.shape == (40, 2)
    assert first.explained_variance_ratio is None
    np.testing.assert_allclose(first.embedding, second.embedding)
    placed = first.transform(points[:4])
    assert placed.shape == (4, 2) and np.isfinite(placed).all()


def test_umap_clips_neighbours_for_small_sets():
    points, _ = _planted(n=12, d=16)
    projection = fit_projection(points, "umap", 3, n_neighbors=50)
    assert projection.embedding.shape == (12, 3)


@pytest.mark.parametrize("n_components", [1, 4, 0])
def test_rejects_bad_component_counts(n_components):
    points, _ = _planted()
    with pytest.raises(ProjectionError, match="2 or 3"):
        fit_projection(points, "pca", n_components)


@pytest.mark.parametrize("method", ["pca", "umap"])
def test_rejects_too_few_points(method):
    points, _ = _planted(n=3)
    with pytest.raises(ProjectionError, match="at least"):
        fit_projection(points, method, 2)


def test_rejects_bad_inputs():
    points, _ = _planted()
    with pytest.raises(ProjectionError, match="method"):
        fit_projection(points, "tsne", 2)
    with pytest.raises(ProjectionError, match="2-D"):
        fit_projection(points[0], "pca", 2)
    broken = points.copy()
    broken[0, 0] = np.nan
    with pytest.raises(ProjectionError, match="NaN"):
        fit_projection(broken, "pca", 2)
    projection = fit_projection(points, "pca", 2)
    with pytest.raises(ProjectionError, match="width"):
        projection.transform(points[:, :10])


def test_umap_kernels_use_numbas_disk_cache():
    """Without the on-disk cache every new server compiled UMAP's kernels before its first map."""
    from numba.core.caching import NullCache

    from refusal_core.projection import _import_umap

    _import_umap()  # switches the disk cache on before the kernels compile
    import umap.layouts
    import umap.umap_

    assert not isinstance(umap.layouts._nb_optimize_layout_euclidean_single_epoch._cache, NullCache)
    assert not isinstance(umap.umap_.smooth_knn_dist._cache, NullCache)
