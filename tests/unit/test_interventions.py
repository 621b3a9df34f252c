"""Ablation hooks, activation addition, per-row interventions and weight orthogonalization."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import pytest
import torch

from refusal_core.directions.base import DirectionError, DirectionSet
from refusal_core.interventions.hooks import ablate, actadd, apply_intervention, row_interventions
from refusal_core.interventions.linalg import orthonormal_basis, project_out
from refusal_core.interventions.spec import Intervention
from refusal_core.interventions.weights import orthogonalize_weights_, orthogonalized_weights
from refusal_core.model.families import model_lock, model_parts
from tests.tiny import assert_no_hooks, tiny_model

D = 64


def random_directions(k: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(k, D, generator=torch.Generator().manual_seed(seed))


def random_ids(rows: int = 2, length: int = 7, seed: int = 2) -> torch.Tensor:
    return torch.randint(3, 300, (rows, length), generator=torch.Generator().manual_seed(seed))


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def _first(value):
    return value[0] if isinstance(value, tuple) else value


@contextmanager
def capture_residual_writes(model):
    """Our own hooks recording every block input, attention write, MLP write and the final stream.

    Registered after the hooks under test, so they see the edited values.
    """
    parts = model_parts(model)
    records: dict[str, list[torch.Tensor]] = {"input": [], "attn": [], "mlp": [], "final": []}

    def pre(key):
        def hook(module, args, kwargs):
            hidden = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs["hidden_states"]
            records[key].append(hidden.detach().clone())

        return hook

    def post(key):
        return lambda module, args, output: records[key].append(_first(output).detach().clone())

    handles = []
    try:
        for layer, attn, mlp in zip(parts.layers, parts.attn_writes, parts.mlp_writes):
            handles.append(layer.register_forward_pre_hook(pre("input"), with_kwargs=True))
            handles.append(attn.register_forward_hook(post("attn")))
            handles.append(mlp.register_forward_hook(post("mlp")))
        handles.append(parts.final_norm.register_forward_pre_hook(pre("final"), with_kwargs=True))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def max_relative_projection(records: dict[str, list[torch.Tensor]], direction: torch.Tensor) -> float:
    """max |x . u| / max |x| over every captured tensor, for the unit direction u."""
    unit = direction / direction.norm()
    worst = 0.0
    for tensors in records.values():
        for x in tensors:
            worst = max(worst, ((x @ unit).abs().max() / x.norm(dim=-1).max()).item())
    return worst


# --- pure mathematics ------------------------------------------------------------------


def test_orthonormal_basis_drops_dependent_directions():
    a, b = random_directions(2)
    basis = orthonormal_basis(torch.stack([a, b, 2 * a - b]))
    assert basis.shape == (D, 2) and basis.dtype == torch.float64
    assert torch.allclose(basis.T @ basis, torch.eye(2, dtype=torch.float64), atol=1e-12)
    for v in (a, b):
        v = v.double()
        assert (v - basis @ (basis.T @ v)).norm() < 1e-10 * v.norm()


def test_project_out_returns_new_tensor_in_input_dtype():
    x = torch.randn(4, 5, D).to(torch.bfloat16)
    before = x.clone()
    basis = orthonormal_basis(random_directions(3))
    out = project_out(x, basis)
    assert out.dtype == torch.bfloat16 and out.data_ptr() != x.data_ptr()
    assert torch.equal(x, before)
    exact = project_out(x.double(), basis)
    assert exact.dtype == torch.float64
    assert (exact @ basis).abs().max() < 1e-12 * exact.abs().max()


# --- ablation hooks --------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma2", "qwen2", "phi3", "gemma"])
def test_orthogonal_ablation_removes_every_direction_from_every_write(family):
    model = tiny_model(family).model
    directions = random_directions(3)
    ids = random_ids()
    with capture_residual_writes(model) as baseline:
        logits(model, ids)
    # Without ablation the directions are present, so the test below can fail.
    assert all(max_relative_projection(baseline, d) > 1e-2 for d in directions)
    with ablate(model, directions):
        with capture_residual_writes(model) as ablated:
            logits(model, ids)
    assert len(ablated["input"]) == len(ablated["attn"]) == len(ablated["mlp"]) == 3
    for direction in directions:
        assert max_relative_projection(ablated, direction) < 1e-5
    assert_no_hooks(model)


def test_sequential_mode_removes_last_direction_only():
    model = tiny_model("llama").model
    first, noise = random_directions(2)
    # Non-orthogonal pair (cosine about 0.7): sequential projection leaves some of `first`.
    second = first + noise
    directions = torch.stack([first, second])
    ids = random_ids()
    with ablate(model, directions, mode="sequential"), capture_residual_writes(model) as sequential:
        logits(model, ids)
    assert max_relative_projection(sequential, second) < 1e-5
    assert max_relative_projection(sequential, first) > 1e-3
    with ablate(model, directions, mode="orthogonal"), capture_residual_writes(model) as orthogonal:
        logits(model, ids)
    assert max_relative_projection(orthogonal, first) < 1e-5


def test_ablation_on_chosen_layers_only():
    model = tiny_model("llama").model
    direction = random_directions(1)
    with ablate(model, direction, layers=[1]), capture_residual_writes(model) as records:
        logits(model, random_ids())
    unit = direction[0] / direction[0].norm()
    assert (records["input"][1] @ unit).abs().max() < 1e-5 * records["input"][1].abs().max()
    assert (records["mlp"][1] @ unit).abs().max() < 1e-5 * records["mlp"][1].abs().max()
    assert (records["mlp"][2] @ unit).abs().max() > 1e-3 * records["mlp"][2].abs().max()


def test_ablation_keeps_bfloat16_activations():
    model = tiny_model("llama").model.to(torch.bfloat16)
    direction = random_directions(1)
    with ablate(model, direction), capture_residual_writes(model) as records:
        out = logits(model, random_ids())
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert records["mlp"][0].dtype == torch.bfloat16
    assert max_relative_projection({"mlp": [r.float() for r in records["mlp"]]}, direction[0]) < 1e-2


# --- activation addition ---------------------------------------------------------------


def test_actadd_adds_exactly_coeff_times_vector_at_its_layer():
    model = tiny_model("llama").model
    vector = random_directions(1)[0] * 3.0  # raw, not unit: Arditi adds the DIM vector itself
    ids = random_ids()
    with capture_residual_writes(model) as plain:
        logits(model, ids)
    with actadd(model, vector, layer=1, coeff=-0.5), capture_residual_writes(model) as steered:
        logits(model, ids)
    assert torch.equal(steered["input"][0], plain["input"][0])
    delta = steered["input"][1] - plain["input"][1]
    assert torch.allclose(delta, (-0.5 * vector).expand_as(delta), atol=1e-5)
    assert not torch.allclose(steered["input"][2], plain["input"][2], atol=1e-3)
    assert_no_hooks(model)


# --- weight orthogonalization ----------------------------------------------------------


@pytest.mark.parametrize(
    "family,tie",
    [("llama", False), ("llama", True), ("gpt2", False), ("qwen2", False), ("phi3", False), ("gemma", False)],
)
def test_weight_orthogonalization_equals_hooks(family, tie):
    model = tiny_model(family, tie=tie).model
    directions = random_directions(2)
    ids = random_ids()
    plain = logits(model, ids)
    with ablate(model, directions):
        hooked = logits(model, ids)
    with orthogonalized_weights(model, directions):
        assert_no_hooks(model)
        edited = logits(model, ids)
    assert rel_err(hooked, plain) > 1e-2  # the ablation does change the model
    assert rel_err(edited, hooked) < 1e-4


def test_a_family_layout_missing_a_writer_is_caught_by_the_probe(monkeypatch):
    """A family table that forgets the MLP's output projection must not ablate partially:
    the residual self-check names the first leaking layer's MLP, and the weights come back."""
    from dataclasses import replace

    from refusal_core.model import families
    from refusal_core.model.family_spec import Writer
    from refusal_core.model.probe import ResidualLeakError

    model = tiny_model("llama").model
    broken = replace(families.FAMILIES["llama"], writers=(Writer("self_attn.o_proj", "attn"),))
    monkeypatch.setitem(families.FAMILIES, "llama", broken)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ResidualLeakError, match=r"after block 0 .* model\.layers\.0\.mlp\.down_proj"):
        with orthogonalized_weights(model, random_directions(1)):
            pass
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("family,tie", [("llama", True), ("gpt2", False), ("llama", False)])
def test_weights_and_tie_restored_exactly(family, tie):
    model = tiny_model(family, tie=tie).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    embedding, head = model.get_input_embeddings().weight, model.lm_head.weight
    was_tied = head is embedding
    original_embedding = embedding.detach().clone()
    assert was_tied == (tie or family == "gpt2")
    directions = random_directions(2)
    with orthogonalized_weights(model, directions):
        assert not torch.equal(model.get_input_embeddings().weight, original_embedding)
        assert torch.equal(model.lm_head.weight, before["lm_head.weight"])
    with pytest.raises(KeyError):
        with orthogonalized_weights(model, directions):
            raise KeyError("boom")
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.get_input_embeddings().weight is embedding and model.lm_head.weight is head


def test_tied_head_keeps_original_matrix_while_embedding_is_edited():
    model = tiny_model("llama", tie=True).model
    original = model.lm_head.weight.detach().clone()
    with orthogonalized_weights(model, random_directions(1)):
        assert model.lm_head.weight is not model.get_input_embeddings().weight
        assert torch.equal(model.lm_head.weight, original)


def test_permanent_orthogonalization_unties_and_matches_hooks():
    loaded = tiny_model("gpt2")
    model = loaded.model
    directions = random_directions(2)
    ids = random_ids()
    with ablate(model, directions):
        hooked = logits(model, ids)
    orthogonalize_weights_(model, directions)
    assert model.lm_head.weight is not model.get_input_embeddings().weight
    assert model.config.tie_word_embeddings is False
    assert rel_err(logits(model, ids), hooked) < 1e-4


def test_orthogonalization_rejects_wrong_width():
    model = tiny_model("llama").model
    with pytest.raises(DirectionError, match="width|\\[k, 64\\]"):
        with orthogonalized_weights(model, torch.randn(1, 32)):
            pass
    assert model.lm_head.weight is not model.get_input_embeddings().weight


# --- hooks are always removed ----------------------------------------------------------


def test_no_hooks_left_after_exit_nesting_and_exceptions():
    model = tiny_model("llama").model
    directions, ids = random_directions(2), random_ids()
    with ablate(model, directions):
        logits(model, ids)
    assert_no_hooks(model)
    with actadd(model, directions[0], layer=2):
        with ablate(model, directions, layers=[0, 2]):
            logits(model, ids)
        logits(model, ids)
    assert_no_hooks(model)
    with pytest.raises(RuntimeError, match="inside"):
        with actadd(model, directions[0], layer=0), ablate(model, directions):
            raise RuntimeError("inside")
    assert_no_hooks(model)


def test_bad_layers_raise_and_leave_no_hooks():
    model = tiny_model("llama").model
    with pytest.raises(ValueError, match="0..2"):
        with ablate(model, random_directions(1), layers=[1, 3]):
            pass
    with pytest.raises(ValueError, match="0..2"):
        with actadd(model, random_directions(1)[0], layer=-1):
            pass
    assert_no_hooks(model)


def test_registration_failure_half_way_leaves_no_hooks(monkeypatch):
    model = tiny_model("llama").model
    target = model_parts(model).mlp_writes[1]

    def refuse(*args, **kwargs):
        raise RuntimeError("registration failed")

    monkeypatch.setattr(target, "register_forward_hook", refuse)
    with pytest.raises(RuntimeError, match="registration failed"):
        with ablate(model, random_directions(1)):
            pass
    assert_no_hooks(model)


def test_width_mismatch_is_a_direction_error():
    model = tiny_model("llama").model
    with pytest.raises(DirectionError, match="width 32"):
        with ablate(model, torch.randn(2, 32)):
            pass
    wrong = DirectionSet(torch.randn(1, 32), ("a",), ({"model": "other"},))
    with pytest.raises(DirectionError, match="width"):
        with ablate(model, wrong):
            pass
    assert_no_hooks(model)


# --- Intervention validation -----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(ablate=torch.full((1, D), float("nan"))), "NaN"),
        (dict(ablate=torch.zeros(2, D)), "zero norm"),
        (dict(ablate=torch.randn(2, 3, D)), "n_directions, d_model"),
        (dict(ablate=torch.randn(1, D), ablate_mode="parallel"), "orthogonal, sequential"),
        (dict(ablate_layers=(1,)), "ablate is None"),
        (dict(ablate=torch.randn(1, D), ablate_layers=()), "non-empty"),
        (dict(actadd=torch.randn(D)), "actadd_layer"),
        (dict(actadd_layer=1), "actadd is None"),
        (dict(actadd=torch.randn(1, D), actadd_layer=1), r"\[d_model\]"),
        (dict(actadd=torch.randn(D), actadd_layer=1, actadd_coeff=float("inf")), "finite"),
        (dict(ablate=torch.randn(1, D), actadd=torch.randn(D + 1), actadd_layer=0), "width"),
    ],
)
def test_intervention_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Intervention(name="bad", **kwargs)


def test_intervention_constructors_and_baseline():
    assert Intervention().is_baseline
    provenance = tuple({"model": "m", "layer": layer, "position": -1} for layer in (0, 2))
    directions = DirectionSet(random_directions(2), ("a", "b"), provenance)
    ablation = Intervention.from_directions("abl", directions, names=["b"], layers=[2, 1, 2])
    assert ablation.ablate.shape == (1, D) and ablation.ablate_layers == (1, 2) and not ablation.is_baseline
    addition = Intervention.from_direction_addition("add", directions, "b", coeff=-1.0)
    assert addition.actadd_layer == 2 and torch.equal(addition.actadd, directions.vectors[1])


# --- per-row interventions -------------------------------------------------------------


def test_row_interventions_match_single_managers():
    model = tiny_model("llama").model
    ids = random_ids(rows=3)
    directions = random_directions(3)
    rows = [
        Intervention(),
        Intervention(name="ablate A", ablate=directions[:2]),
        Intervention(name="actadd B", actadd=directions[2] * 2.0, actadd_layer=1, actadd_coeff=1.5),
    ]
    plain = logits(model, ids)
    with row_interventions(model, rows):
        batched = logits(model, ids)
    assert_no_hooks(model)
    assert torch.equal(batched[0], plain[0])
    with ablate(model, directions[:2]):
        alone_a = logits(model, ids[1:2])
    with actadd(model, directions[2] * 2.0, layer=1, coeff=1.5):
        alone_b = logits(model, ids[2:3])
    assert rel_err(batched[1], alone_a[0]) < 1e-5
    assert rel_err(batched[2], alone_b[0]) < 1e-5
    assert rel_err(batched[1], plain[1]) > 1e-2 and rel_err(batched[2], plain[2]) > 1e-2


def test_row_interventions_mix_modes_and_layer_sets():
    model = tiny_model("qwen2").model
    ids = random_ids(rows=4)
    directions = random_directions(3)
    rows = [
        Intervention(name="seq", ablate=directions, ablate_mode="sequential"),
        Intervention(name="orth", ablate=directions),
        Intervention(name="layer 1", ablate=directions[:1], ablate_layers=(1,)),
        Intervention(name="both", ablate=directions[1:], ablate_layers=(0, 2), actadd=directions[0], actadd_layer=2),
    ]
    with row_interventions(model, rows):
        batched = logits(model, ids)
    for row, intervention in enumerate(rows):
        with apply_intervention(model, intervention):
            alone = logits(model, ids[row : row + 1])
        assert rel_err(batched[row], alone[0]) < 1e-5, intervention.name
    assert_no_hooks(model)


def test_row_interventions_generate_with_kv_cache():
    loaded = tiny_model("llama")
    model = loaded.model
    ids = random_ids(rows=2, length=5)
    rows = [Intervention(), Intervention(name="ablate", ablate=random_directions(2))]
    settings = dict(max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad(), row_interventions(model, rows):
        batched = model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
    for row, intervention in enumerate(rows):
        with torch.no_grad(), apply_intervention(model, intervention):
            alone = model.generate(ids[row : row + 1], attention_mask=torch.ones_like(ids[:1]), **settings)
        assert torch.equal(batched[row], alone[0])
    assert_no_hooks(model)


def test_row_interventions_reject_wrong_batch_size():
    model = tiny_model("llama").model
    with pytest.raises(ValueError, match="one Intervention per batch row"):
        with row_interventions(model, [Intervention(), Intervention()]):
            logits(model, random_ids(rows=3))
    with pytest.raises(ValueError, match="one Intervention per batch row"):
        with row_interventions(model, []):
            pass
    assert_no_hooks(model)


# --- concurrency -----------------------------------------------------------------------


def test_model_lock_serializes_baseline_against_ablation():
    model = tiny_model("llama").model
    ids = random_ids()
    plain = logits(model, ids)
    entered, results = threading.Event(), {}

    def ablating() -> None:
        with ablate(model, random_directions(2)):
            entered.set()
            time.sleep(0.3)
            results["ablated"] = logits(model, ids)
            results["ablation_until"] = time.monotonic()

    def baseline() -> None:
        entered.wait(5)
        with model_lock(model):
            results["baseline_at"] = time.monotonic()
            results["baseline"] = logits(model, ids)

    threads = [threading.Thread(target=ablating), threading.Thread(target=baseline)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert torch.equal(results["baseline"], plain)
    assert not torch.allclose(results["ablated"], plain, atol=1e-3)
    assert results["baseline_at"] >= results["ablation_until"]
    assert_no_hooks(model)


def test_block_input_given_as_keyword_is_edited():
    from refusal_core.interventions.hooks import _edited_input, _LayerEdit, _RowTensor
    from refusal_core.model.forward import input_pre_hook

    class Block(torch.nn.Module):
        def forward(self, hidden_states: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
            return hidden_states * scale

    block, vector = Block(), torch.randn(D)
    edit = _LayerEdit(delta=_RowTensor(vector.double()[None]))
    handle = block.register_forward_pre_hook(input_pre_hook(_edited_input(edit, rows=None)), with_kwargs=True)
    try:
        x = torch.randn(2, 3, D)
        assert torch.allclose(block(hidden_states=x, scale=2.0), 2 * (x + vector), atol=1e-6)
        assert torch.allclose(block(x, scale=2.0), 2 * (x + vector), atol=1e-6)
    finally:
        handle.remove()
