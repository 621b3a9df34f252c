"""Clustering of directions by angle recovers planted families and rejects bad input."""

from __future__ import annotations

import math

import pytest
import torch

from refusal_core.directions.clustering import cluster_direction_set, cluster_directions

N_CLUSTERS, MEMBERS, D = 4, 30, 64


def _planted(seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Four random directions in 64-d, 30 noisy members each, norms varying 6-fold; shuffled."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(N_CLUSTERS, D, generator=generator), dim=1)
    family = torch.arange(N_CLUSTERS).repeat_interleave(MEMBERS)
    noise = 0.25 * torch.randn(len(family), D, generator=generator) / math.sqrt(D)
    scale = 0.5 + 2.5 * torch.rand(len(family), 1, generator=generator)
    vectors = scale * (centres[family] + noise)
    order = torch.randperm(len(family), generator=generator)
    categories = [f"type{int(f)}" for f in family[order]]
    return vectors[order], categories


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_recovers_planted_clusters_with_chosen_k(method):
    vectors, categories = _planted()
    result = cluster_directions(vectors, method=method, categories=categories)
    assert result.k == N_CLUSTERS
    assert max(result.silhouettes, key=result.silhouettes.get) == N_CLUSTERS
    assert set(result.silhouettes) == set(range(2, 9))
    assert result.adjusted_rand > 0.95 and result.normalized_mutual_info > 0.95
    assert result.silhouette == pytest.approx(result.silhouettes[N_CLUSTERS])
    assert result.sizes == (MEMBERS,) * N_CLUSTERS and sum(result.sizes) == len(vectors)
    assert result.labels.shape == (len(vectors),)
    for cluster in range(N_CLUSTERS):
        assert sum(result.contingency[cluster].values()) == MEMBERS
        assert result.contingency[cluster][result.dominant_category(cluster)] == MEMBERS


def test_centroids_point_along_members_with_their_mean_norm():
    vectors, _ = _planted()
    result = cluster_directions(vectors, k=N_CLUSTERS, seed=3)
    assert result.centroids.shape == (N_CLUSTERS, D) and not result.silhouettes
    for cluster in range(N_CLUSTERS):
        members = vectors[result.labels == cluster]
        mean_unit = torch.nn.functional.normalize(members, dim=1).mean(0)
        centroid = result.centroids[cluster]
        assert torch.nn.functional.cosine_similarity(centroid, mean_unit, dim=0) > 0.9999
        assert centroid.norm() == pytest.approx(float(members.norm(dim=1).mean()), rel=1e-5)


def test_labels_are_numbered_by_size_and_deterministic():
    vectors, _ = _planted()
    vectors = vectors[: MEMBERS * N_CLUSTERS - 20]  # uneven cluster sizes
    first = cluster_directions(vectors, k=N_CLUSTERS, seed=0)
    again = cluster_directions(vectors, k=N_CLUSTERS, seed=0)
    assert torch.equal(first.labels, again.labels)
    assert list(first.sizes) == sorted(first.sizes, reverse=True)
    assert first.contingency is None and first.adjusted_rand is None


@pytest.mark.parametrize("method", ["kmeans", "agglomerative"])
def test_labels_ignore_vector_lengths(method):
    vectors, _ = _planted()
    rescale = torch.rand(len(vectors), 1, generator=torch.Generator().manual_seed(5)) * 100 + 0.01
    plain = cluster_directions(vectors, k=N_CLUSTERS, method=method)
    rescaled = cluster_directions(vectors * rescale, k=N_CLUSTERS, method=method)
    assert torch.equal(plain.labels, rescaled.labels)


def test_direction_set_from_clusters():
    vectors, categories = _planted()
    result = cluster_directions(vectors, k=N_CLUSTERS, categories=categories)
    directions = cluster_direction_set(result, {"model": "m", "layer": 2, "position": -1, "method": "prompt_gradient"})
    assert directions.names == tuple(f"cluster/{c}" for c in range(N_CLUSTERS))
    record = directions.provenance[0]
    assert record["method"] == "cluster" and record["source_method"] == "prompt_gradient"
    assert record["members"] == MEMBERS and record["dominant_category"].startswith("type")
    assert record["params"]["k"] == N_CLUSTERS and record["layer"] == 2


def test_bad_input():
    vectors, categories = _planted()
    with pytest.raises(ValueError, match="at least 2"):
        cluster_directions(vectors[:1], k=1)
    with pytest.raises(ValueError, match="k must be"):
        cluster_directions(vectors[:5], k=6)
    with pytest.raises(ValueError, match="Unknown clustering method"):
        cluster_directions(vectors, k=2, method="dbscan")
    with pytest.raises(ValueError, match="k_range"):
        cluster_directions(vectors[:3], k_range=range(3, 9))
    with pytest.raises(ValueError, match="categories"):
        cluster_directions(vectors, k=2, categories=categories[:-1])
    zero = vectors.clone()
    zero[0] = 0
    with pytest.raises(ValueError, match="zero"):
        cluster_directions(zero, k=2)
    with pytest.raises(ValueError, match="NaN"):
        cluster_directions(torch.full((3, 4), float("nan")), k=2)


def test_degenerate_k_has_undefined_silhouette():
    vectors, _ = _planted()
    assert math.isnan(cluster_directions(vectors[:6], k=6, method="agglomerative").silhouette)
    assert math.isnan(cluster_directions(vectors[:6], k=1).silhouette)
