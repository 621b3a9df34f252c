"""Norm-preserving ablation: hooks and weight edits remove the directions and give each edited
vector its norm back, checked on real forward passes and weights against hand computations."""

from __future__ import annotations

import pytest
import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.interventions.hooks import apply_intervention, row_interventions
from refusal_core.interventions.linalg import restore_norm
from refusal_core.interventions.spec import Intervention
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.model.fingerprint import weights_sha256
from tests.tiny import assert_no_hooks, tiny_model

IDS = torch.tensor([[1, 5, 9, 30, 44, 7], [3, 8, 2, 11, 6, 40]])


def _directions(k: int = 2) -> torch.Tensor:
    return torch.randn(k, 64, generator=torch.Generator().manual_seed(7))


def _basis(vectors: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(vectors.double().T)
    return q


def test_restore_norm_by_hand():
    original = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    projected = torch.tensor([[0.0, 4.0], [0.0, 0.0]])
    out = restore_norm(projected, original)
    assert torch.allclose(out, torch.tensor([[0.0, 5.0], [0.0, 0.0]]))  # a vector projected to zero stays zero


def _capture(module, store):
    def hook(mod, args, output):
        store.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    return module.register_forward_hook(hook)


def test_hooks_remove_the_span_and_keep_each_residual_norm(one_thread):
    loaded = tiny_model("llama")
    model = loaded.model
    vectors = _directions()
    q = _basis(vectors).float()
    writer = model.model.layers[1].self_attn.o_proj
    raw, edited = [], []
    first = _capture(writer, raw)  # registered first: sees the output before the ablation hook
    try:
        with (
            torch.no_grad(),
            apply_intervention(model, Intervention(name="np", ablate=vectors, ablate_mode="norm-preserving")),
        ):
            second = _capture(writer, edited)  # registered after: sees the edited output
            try:
                model(IDS)
            finally:
                second.remove()
    finally:
        first.remove()
    assert_no_hooks(model)
    before, after = raw[0], edited[0]
    assert (after @ q).abs().max() < 1e-5 * before.norm(dim=-1).max()
    assert torch.allclose(after.norm(dim=-1), before.norm(dim=-1), rtol=1e-5)
    plain = before - (before @ q) @ q.T
    assert (plain.norm(dim=-1) < before.norm(dim=-1) - 1e-4).any()  # plain ablation would have shrunk them


def test_rows_mix_plain_and_norm_preserving(one_thread):
    loaded = tiny_model("llama")
    model = loaded.model
    vectors = _directions(1)
    rows = [
        Intervention(name="plain", ablate=vectors),
        Intervention(name="np", ablate=vectors, ablate_mode="norm-preserving"),
    ]
    with torch.no_grad():
        with row_interventions(model, rows):
            mixed = model(IDS).logits
        for index, row in enumerate(rows):
            with apply_intervention(model, row):
                alone = model(IDS[index : index + 1]).logits
            assert (mixed[index] - alone[0]).abs().max() < 1e-4
    assert (mixed[0] - mixed[1]).abs().max() > 0  # different prompts; the check above pins each row


def test_weight_edit_keeps_each_residual_column_norm_and_restores_the_model(one_thread):
    loaded = tiny_model("llama")
    model = loaded.model
    vectors = _directions()
    q = _basis(vectors)
    before = weights_sha256(model)
    o_proj = model.model.layers[2].self_attn.o_proj.weight.detach().double().clone()
    embed = model.model.embed_tokens.weight.detach().double().clone()
    with orthogonalized_weights(model, vectors, mode="norm-preserving"):
        new_o = model.model.layers[2].self_attn.o_proj.weight.detach().double()
        new_e = model.model.embed_tokens.weight.detach().double()
        head = model.lm_head.weight.detach().double()
    assert weights_sha256(model) == before
    assert (q.T @ new_o).abs().max() < 1e-5 and (new_e @ q).abs().max() < 1e-5
    assert torch.allclose(new_o.norm(dim=0), o_proj.norm(dim=0), rtol=1e-5)  # columns: what each input unit writes
    assert torch.allclose(new_e.norm(dim=1), embed.norm(dim=1), rtol=1e-5)  # rows: one token's embedding
    hand = o_proj - q @ (q.T @ o_proj)
    hand = hand * (o_proj.norm(dim=0) / hand.norm(dim=0))
    assert torch.allclose(new_o, hand, atol=1e-5)
    assert torch.equal(head.float(), model.lm_head.weight)


def test_sequential_mode_cannot_be_a_weight_edit():
    loaded = tiny_model("llama")
    with pytest.raises(SettingsError, match="sequential"):
        with orthogonalized_weights(loaded.model, _directions(), mode="sequential"):
            pass


def test_folder_export_in_norm_preserving_mode(tmp_path, one_thread):
    from transformers import AutoModelForCausalLM

    from refusal_core.exports.registry import ExportRequest, get_format

    loaded = tiny_model("llama")
    directions = DirectionSet(vectors=_directions(), names=("a", "b"), provenance=({}, {}))
    fmt = get_format("folder")
    out = fmt.write(
        ExportRequest(
            loaded=loaded, directions=directions, out_dir=tmp_path / "f", settings=fmt.settings(mode="norm-preserving")
        )
    )
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        with orthogonalized_weights(loaded.model, directions, mode="norm-preserving"):
            expected = loaded.model(IDS).logits
        with orthogonalized_weights(loaded.model, directions):
            plain = loaded.model(IDS).logits
        got = exported(IDS).logits
    assert (got - expected).abs().max() < 1e-5
    assert (plain - expected).abs().max() > 1e-3
    assert (out / "manifest.json").is_file()
