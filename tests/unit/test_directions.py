"""Difference-in-means directions and DirectionSet persistence and validation."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_core.directions.base import DirectionError, DirectionSet, cosine_matrix, load_direction_set
from refusal_core.directions.dim import dim_direction_set, dim_directions, dim_from_activations


def _random_set(n: int = 3, d: int = 8) -> DirectionSet:
    torch.manual_seed(0)
    return DirectionSet(
        vectors=torch.randn(n, d),
        names=tuple(f"d{i}" for i in range(n)),
        provenance=tuple(
            {"model": "m", "layer": i, "position": -1, "method": "test", "data_hash": "x", "params": {}}
            for i in range(n)
        ),
        meta={"model": "m"},
    )


def test_dim_equals_hand_computation():
    torch.manual_seed(0)
    harmful, harmless = torch.randn(5, 2, 3, 8) + 1.0, torch.randn(7, 2, 3, 8)
    expected = torch.zeros(2, 3, 8, dtype=torch.float64)
    for row in harmful.double():
        expected += row / 5
    for row in harmless.double():
        expected -= row / 7
    assert torch.allclose(dim_directions(harmful, harmless).double(), expected, atol=1e-6)


def test_dim_direction_set_names_and_provenance():
    harmful, harmless = torch.randn(4, 2, 3, 8) + 2, torch.randn(4, 2, 3, 8)
    directions = dim_direction_set(
        harmful, harmless, positions=[-2, -1], layers=[0, 1, 2], provenance={"model": "m", "data_hash": "h"}
    )
    assert len(directions) == 6
    assert directions.names[4] == "dim/pos-1/layer1"
    assert directions.provenance[4] == {"model": "m", "data_hash": "h", "layer": 1, "position": -1, "method": "dim"}
    assert torch.allclose(directions.vectors[4], dim_directions(harmful, harmless)[1, 1])


def test_zero_candidates_are_dropped_and_listed():
    harmful, harmless = torch.randn(4, 1, 2, 8), torch.randn(4, 1, 2, 8)
    harmful[:, :, 0] = harmless[:, :, 0] = torch.ones(8)  # layer 0: the same embedding for every prompt
    directions = dim_direction_set(harmful, harmless, positions=[-1], layers=[0, 1], provenance={"model": "m"})
    assert directions.names == ("dim/pos-1/layer1",)
    assert directions.meta["dropped"] == ["dim/pos-1/layer0"]
    with pytest.raises(DirectionError, match="identical"):
        dim_direction_set(harmless, harmless, positions=[-1], layers=[0, 1], provenance={})


def test_dim_from_activations_takes_block_inputs_only():
    from refusal_core.activations.extract import Activations

    torch.manual_seed(1)

    def acts(shift: float) -> torch.Tensor:  # 3 blocks: block inputs 0..2, then the final output
        return torch.randn(5, 2, 4, 8) + shift

    harmful = Activations(acts=acts(1.0), positions=(-2, -1), instructions=("x",) * 5, key="a")
    harmless = Activations(acts=acts(0.0), positions=(-2, -1), instructions=("y",) * 5, key="b")
    every = dim_from_activations(harmful, harmless, {"model": "m"})
    assert len(every) == 6 and "dim/pos-1/layer3" not in every.names
    assert torch.allclose(
        every.select(["dim/pos-2/layer2"]).vectors[0], dim_directions(harmful.acts, harmless.acts)[0, 2]
    )
    some = dim_from_activations(harmful, harmless, {"model": "m"}, layers=[2, 0])
    assert some.names == ("dim/pos-2/layer2", "dim/pos-2/layer0", "dim/pos-1/layer2", "dim/pos-1/layer0")
    assert torch.allclose(some.select(["dim/pos-1/layer0"]).vectors[0], every.select(["dim/pos-1/layer0"]).vectors[0])
    with pytest.raises(DirectionError, match="0..2"):
        dim_from_activations(harmful, harmless, {}, layers=[3])
    other = Activations(acts=acts(0.0), positions=(-3, -1), instructions=("z",) * 5, key="c")
    with pytest.raises(DirectionError, match="different positions"):
        dim_from_activations(harmful, other, {})


def test_save_load_round_trip(tmp_path):
    directions = _random_set()
    directions.save(tmp_path / "set")
    loaded = load_direction_set(tmp_path / "set.json", d_model=8)
    assert torch.equal(loaded.vectors, directions.vectors)
    assert loaded.names == directions.names and loaded.provenance == directions.provenance


def test_load_validates_width_and_files(tmp_path):
    _random_set().save(tmp_path / "set")
    with pytest.raises(DirectionError, match="width 8 .* width 16"):
        load_direction_set(tmp_path / "set", d_model=16)
    with pytest.raises(DirectionError, match="not found"):
        load_direction_set(tmp_path / "other")
    (tmp_path / "set.json").write_text("{not json")
    with pytest.raises(DirectionError, match="not valid direction metadata"):
        load_direction_set(tmp_path / "set")
    (tmp_path / "set.safetensors").write_bytes(b"garbage")
    with pytest.raises(DirectionError, match="not a readable"):
        load_direction_set(tmp_path / "set")


def test_invalid_vectors_are_rejected():
    good = _random_set()
    with pytest.raises(DirectionError, match="NaN"):
        DirectionSet(good.vectors * float("nan"), good.names, good.provenance)
    with pytest.raises(DirectionError, match="zero norm"):
        DirectionSet(torch.zeros(3, 8), good.names, good.provenance)
    with pytest.raises(DirectionError, match="names"):
        DirectionSet(good.vectors, good.names[:2], good.provenance)
    with pytest.raises(DirectionError, match="unique"):
        DirectionSet(good.vectors, ("a", "a", "b"), good.provenance)


def test_select_concat_and_cosines():
    directions = _random_set()
    picked = directions.select(["d2", "d0"])
    assert torch.equal(picked.vectors[0], directions.vectors[2])
    with pytest.raises(DirectionError, match="No direction named zz"):
        directions.select(["zz"])
    both = DirectionSet.concat([directions, picked], prefixes=["a/", "b/"])
    assert both.names[-1] == "b/d0" and len(both) == 5
    cosines = cosine_matrix(directions.vectors)
    assert torch.allclose(cosines.diag(), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(cosines, cosines.T)
    assert json.dumps(picked.provenance)
