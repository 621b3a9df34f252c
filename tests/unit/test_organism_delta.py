"""The shipped organism delta: exact, reproducible application; identity checks; the build paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refusal_core.model.fingerprint import weights_sha256
from refusal_core.organism import delta as organism_delta
from refusal_core.organism.delta import (
    DeltaMismatchError,
    LowRankFactors,
    OrganismDelta,
    apply_organism_delta,
    low_rank_factors,
    make_delta,
    quantize_rows,
)
from tests.tiny import tiny_model


def _tuned_state(loaded, seed: int = 0) -> dict[str, torch.Tensor]:
    """The tiny model's weights with every block matrix and norm nudged, embeddings kept."""
    generator = torch.Generator().manual_seed(seed)
    state = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    for name, tensor in state.items():
        if name.startswith("model.layers.") or name == "model.norm.weight":
            tensor.add_(1e-2 * torch.randn(tensor.shape, generator=generator))
    return state


def _delta(loaded, rank: int = 4) -> OrganismDelta:
    base_state = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    return make_delta(base_state, _tuned_state(loaded), rank, weights_sha256(loaded.model), info={"rank": rank})


def test_materialize_is_the_exact_integer_product_scaled_elementwise():
    generator = torch.Generator().manual_seed(1)
    factors = low_rank_factors(torch.randn(48, 40, generator=generator, dtype=torch.float64), rank=6)
    exact = factors.u.numpy().astype(np.int64) @ factors.v.numpy().astype(np.int64)  # integer arithmetic
    expected = exact.astype(np.float32) * factors.u_scale.numpy()[:, None] * factors.v_scale.numpy()[None, :]
    assert np.array_equal(factors.materialize().numpy(), expected)
    # Row chunks of the factors give the same bits as the whole matrix: no summation-order effects.
    chunks = [
        LowRankFactors(factors.u[rows], factors.u_scale[rows], factors.v, factors.v_scale).materialize()
        for rows in (slice(0, 7), slice(7, 30), slice(30, 48))
    ]
    assert torch.equal(torch.cat(chunks), factors.materialize())


def test_applied_weights_are_identical_under_any_thread_count():
    shas = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            loaded = tiny_model("llama")
            shas.append(apply_organism_delta(loaded.model, _delta(tiny_model("llama")), check=False))
    finally:
        torch.set_num_threads(previous)
    assert shas[0] == shas[1]


def test_quantized_factors_approximate_the_truncated_svd():
    generator = torch.Generator().manual_seed(2)
    low_rank = torch.randn(64, 5, generator=generator, dtype=torch.float64) @ torch.randn(
        5, 32, generator=generator, dtype=torch.float64
    )
    approx = low_rank_factors(low_rank, rank=5).materialize().double()
    assert (approx - low_rank).norm() / low_rank.norm() < 0.02  # int8 rounding only: the matrix has rank 5
    q, scale = quantize_rows(torch.tensor([[0.0, 0.0], [1.0, -0.5]]))
    assert q.dtype == torch.int8 and q[0].tolist() == [0, 0] and scale[0] == 1 and q[1].tolist() == [127, -64]


def test_delta_changes_only_what_the_fine_tune_changed_and_records_the_result(tmp_path):
    loaded = tiny_model("llama")
    before = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    tuned = _tuned_state(loaded)
    delta = _delta(loaded, rank=64)  # full rank: only int8 rounding remains
    assert not any("embed" in name for name in list(delta.factors) + list(delta.replaced))
    assert delta.replaced and all(tensor.ndim == 1 for tensor in delta.replaced.values())
    sha = apply_organism_delta(loaded.model, delta)
    state = loaded.model.state_dict()
    for name, tensor in state.items():
        if name in delta.replaced:
            assert torch.equal(tensor, tuned[name]), name
        elif name in delta.factors:
            change = tuned[name] - before[name]
            assert (tensor - tuned[name]).norm() < 0.05 * change.norm(), name
        else:
            assert torch.equal(tensor, before[name]), name
    # Saved and loaded, with the result's sha256 recorded, the delta gives the same bits again.
    path = OrganismDelta(delta.factors, delta.replaced, delta.base_sha256, sha, delta.info).save(
        tmp_path / "delta.safetensors"
    )
    again = tiny_model("llama")
    assert apply_organism_delta(again.model, OrganismDelta.load(path)) == sha == weights_sha256(again.model)


def test_a_delta_refuses_other_base_weights_and_a_wrong_result(tmp_path):
    delta = _delta(tiny_model("llama"))
    other = tiny_model("llama")
    with torch.no_grad():
        other.model.model.embed_tokens.weight[0, 0] += 1.0
    with pytest.raises(DeltaMismatchError, match="base weights here"):
        apply_organism_delta(other.model, delta)
    wrong = OrganismDelta(delta.factors, delta.replaced, delta.base_sha256, "0" * 64, delta.info)
    with pytest.raises(DeltaMismatchError, match="not the recorded"):
        apply_organism_delta(tiny_model("llama").model, wrong)
    with pytest.raises(DeltaMismatchError, match="missing"):
        OrganismDelta.load(tmp_path / "absent.safetensors")
    not_a_delta = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(not_a_delta))
    with pytest.raises(DeltaMismatchError, match="not an organism delta"):
        OrganismDelta.load(not_a_delta)


def test_build_applies_the_shipped_delta_and_the_organism_loads_with_its_sha(tmp_path, monkeypatch):
    from refusal_core.model.loading import load_model
    from refusal_core.organism import build as organism

    loaded = tiny_model("llama")
    delta = _delta(loaded)
    sha = apply_organism_delta(tiny_model("llama").model, delta, check=False)
    info = {
        "rank": 4,
        "settings": {
            "reply_tokens": 24,
            "steps": 1,
            "batch_size": 2,
            "learning_rate": 1e-3,
            "seed": 0,
            "harmful_share": 0.5,
            "train_fraction": 1.0,
            "distill_weight": 0.3,
        },
        "n_harmful": 1,
        "n_harmless": 1,
        "losses": [1.0, 0.5],
        "fine_tune_seconds": 1.0,
        "fine_tune_sha256": "f" * 64,
        "delta_bytes": delta.n_bytes,
        "refusal": {"max_new_tokens": 16, "harmful": 1.0, "n_harmful": 1, "harmless": 0.0, "n_harmless": 1},
    }
    shipped = OrganismDelta(delta.factors, delta.replaced, delta.base_sha256, sha, info).save(
        tmp_path / "organism-delta.safetensors"
    )
    monkeypatch.setattr(organism_delta, "load_model", lambda spec: tiny_model("llama"))
    monkeypatch.setattr(organism, "SHIPPED_DELTA", shipped)
    messages = []
    target = organism.build_organism(progress=lambda done, total, message="": messages.append(done / total))
    assert messages[-1] == 1.0 and (target / "README.md").read_text().count(sha) == 1
    assert weights_sha256(load_model(str(target)).model) == sha
    # Built once, the next call only reports that it is there.
    assert organism.build_organism() == target


def test_a_build_from_scratch_writes_a_delta_that_makes_the_organism_it_saved(tmp_path, monkeypatch):
    from refusal_core.model.loading import load_model
    from refusal_core.organism import build as organism

    monkeypatch.setattr(organism, "load_model", lambda spec: tiny_model("llama"))
    settings = organism.OrganismSettings(steps=1, batch_size=4, reply_tokens=2, delta_rank=2)
    target = organism.build_organism(settings, from_scratch=True, delta_out=tmp_path / "delta.safetensors")
    delta = OrganismDelta.load(tmp_path / "delta.safetensors")
    assert {tuple(f.u.shape)[1] for f in delta.factors.values()} == {2}
    assert delta.info["settings"]["delta_rank"] == 2 and delta.info["fine_tune_sha256"] != delta.sha256
    built = load_model(str(target)).model
    assert weights_sha256(built) == delta.sha256
    # The same delta applied to fresh base weights gives the saved organism's bits.
    assert apply_organism_delta(tiny_model("llama").model, delta) == delta.sha256
