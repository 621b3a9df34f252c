"""SOM refusal directions: the 1x1 map is DIM, and the map's bookkeeping is consistent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from refusal_core.directions.dim import dim_directions
from refusal_core.directions.som import SomSettings, neuron_prompts, pca_grid, som_direction_set, train_som

D = 32


def _data(seed: int = 0, n: int = 60, m: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Harmful prompts in three offset groups, harmless ones around the origin."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randn(3, D, generator=generator) * 4
    harmful = offsets[torch.arange(n) % 3] + torch.randn(n, D, generator=generator)
    harmless = torch.randn(m, D, generator=generator)
    return harmful, harmless


SMALL = SomSettings(iterations=300)


def test_one_by_one_som_is_dim():
    harmful, harmless = _data()
    result = train_som(harmful, harmless, SomSettings(x=1, y=1))
    som = result.directions()[0].double()
    dim = dim_directions(harmful, harmless).double()
    assert torch.nn.functional.cosine_similarity(som, dim, dim=0) > 0.9999
    assert (som.norm() - dim.norm()).abs() / dim.norm() < 1e-3
    assert math.isnan(result.topographic_error)
    assert result.edges == ()


def test_directions_are_consistent_and_ordered_by_hits():
    harmful, harmless = _data()
    result = train_som(harmful, harmless, SMALL)
    assert result.weights.shape == (9, D) and result.weights.dtype == torch.float32
    assert int(result.hits.sum()) == harmful.shape[0]
    assert torch.equal(torch.bincount(result.winners, minlength=9), result.hits)
    assert result.quantization_error > 0 and 0 <= result.topographic_error <= 1
    directions = som_direction_set(result, {"model": "test", "layer": 1, "position": -1, "data_hash": "x"})
    assert len(directions) == 9 and directions.d_model == D
    assert torch.isfinite(directions.vectors).all()
    hits = [record["hits"] for record in directions.provenance]
    assert hits == sorted(hits, reverse=True)
    first = directions.provenance[0]
    assert first["method"] == "som" and first["layer"] == 1 and first["params"]["x"] == 3
    assert directions.names[0] == "som/{}-{}".format(*first["grid"])
    neuron = first["neuron"]
    assert torch.allclose(directions.vectors[0], result.weights[neuron] - harmless.mean(0), atol=1e-5)


def test_same_seed_same_map_and_other_seed_differs():
    harmful, harmless = _data()
    first = train_som(harmful, harmless, SMALL)
    again = train_som(harmful, harmless, SMALL)
    other = train_som(harmful, harmless, SomSettings(iterations=300, seed=1))
    assert torch.equal(first.weights, again.weights) and torch.equal(first.winners, again.winners)
    assert not torch.equal(first.weights, other.weights)


@pytest.mark.parametrize(("topology", "n_edges"), [("rectangular", 12), ("hexagonal", 16)])
def test_grid_edges(topology, n_edges):
    harmful, harmless = _data()
    result = train_som(harmful, harmless, SomSettings(iterations=50, topology=topology))
    assert len(result.edges) == n_edges
    assert all(0 <= a < b < 9 for a, b in result.edges)
    lengths = [float((result.coordinates[a] - result.coordinates[b]).norm()) for a, b in result.edges]
    assert lengths == pytest.approx([1.0] * n_edges)
    degrees = torch.bincount(torch.tensor(result.edges).reshape(-1), minlength=9)
    centre = 4  # grid cell (1, 1) has a full neighbourhood in both topologies
    assert int(degrees[centre]) == (4 if topology == "rectangular" else 6)


def test_drawing_helpers_trace_every_edge_and_size_nodes_by_hits():
    harmful, harmless = _data()
    result = train_som(harmful, harmless, SomSettings(iterations=50))
    placed = result.coordinates.numpy()
    xs, ys = result.edge_paths(placed)
    assert len(xs) == len(ys) == 3 * len(result.edges) and xs[2::3] == [None] * len(result.edges)
    assert xs[0:2] == [float(placed[a, 0]) for a in result.edges[0]]
    sizes = result.node_sizes(10, 30)
    busiest = int(result.hits.argmax())
    assert sizes[busiest] == pytest.approx(40) and min(sizes) >= 10
    assert all(
        (sizes[i] < sizes[j]) == (result.hits[i] < result.hits[j])
        for i in range(9)
        for j in range(9)
        if result.hits[i] != result.hits[j]
    )


def test_neuron_prompts_cover_every_prompt_once():
    harmful, harmless = _data(n=30)
    result = train_som(harmful, harmless, SMALL)
    instructions = [f"prompt {i}" for i in range(30)]
    categories = ["a", "b", "c"] * 10
    groups = neuron_prompts(result, instructions, categories)
    assert set(groups) == set(range(9))
    listed = [item for members in groups.values() for item in members]
    assert sorted(listed) == sorted(zip(instructions, categories))
    assert [len(groups[k]) for k in range(9)] == result.hits.tolist()
    with pytest.raises(ValueError, match="instructions"):
        neuron_prompts(result, instructions[:-1], None)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(x=0),
        dict(y=-1),
        dict(sigma=0.0),
        dict(learning_rate=float("nan")),
        dict(iterations=0),
        dict(topology="torus"),
        dict(neighborhood="cone"),
        dict(initialization="kmeans"),
        dict(seed=-1),
    ],
)
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        SomSettings(**kwargs)


def test_bad_data():
    harmful, harmless = _data()
    with pytest.raises(ValueError, match="Widths differ"):
        train_som(harmful, harmless[:, :-1], SMALL)
    with pytest.raises(ValueError, match="NaN"):
        train_som(harmful.clone().fill_(float("nan")), harmless, SMALL)
    with pytest.raises(ValueError, match="non-empty"):
        train_som(harmful[:0], harmless, SMALL)
    with pytest.raises(ValueError, match="order"):
        som_direction_set(train_som(harmful, harmless, SomSettings(x=1, y=1)), {}, order="size")


def _plane(seed: int = 0, n: int = 200, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts on a 40 x 20 rectangle in a random plane of ``width`` dimensions, far from the origin
    (as residual activations are), with a little noise off the plane; returns (points, plane basis [width, 2])."""
    generator = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(width, 2, generator=generator))[0]
    on_plane = torch.rand(n, 2, generator=generator) * torch.tensor([40.0, 20.0])
    points = 300 + on_plane @ basis.T + 0.3 * torch.randn(n, width, generator=generator)
    return points, basis


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_map_on_two_dimensional_data_is_not_folded(seed):
    points, basis = _plane(seed)
    result = train_som(points, torch.randn(20, points.shape[1]), SomSettings())
    # Almost every prompt's two nearest neurons are grid neighbours...
    assert result.topographic_error <= 0.05
    assert result.quantization_error < 0.5 * result.spread
    # ...and the grid lies flat: along each grid axis the neurons advance the same way on the plane.
    plane = (result.weights.double() @ basis.double()).reshape(3, 3, 2).numpy()
    rows = np.sign(np.diff(plane[:, :, 0], axis=0))  # grid x follows the long side (first component)
    columns = np.sign(np.diff(plane[:, :, 1], axis=1))
    assert abs(rows.sum()) == rows.size and abs(columns.sum()) == columns.size


def test_pca_grid_spans_one_standard_deviation_of_the_first_two_components():
    points, basis = _plane(0)
    data = points.double().numpy()
    grid = pca_grid(data, 3, 3)
    assert grid.shape == (3, 3, data.shape[1])
    assert np.allclose(grid[1, 1], data.mean(axis=0))
    along_first = grid[2, 1] - grid[1, 1]
    projected = (data - data.mean(axis=0)) @ (along_first / np.linalg.norm(along_first))
    assert np.linalg.norm(along_first) == pytest.approx(projected.std(ddof=1), rel=1e-6)
    # The first component is the rectangle's long side, inside the plane.
    in_plane = basis.double().numpy().T @ along_first
    assert np.linalg.norm(in_plane) == pytest.approx(np.linalg.norm(along_first), rel=1e-3)
    assert abs(in_plane[0]) > 3 * abs(in_plane[1])
    assert np.allclose(grid[0, 0] + grid[2, 2], 2 * grid[1, 1])
