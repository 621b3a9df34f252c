"""The one writer list (model/writers.py) and the edits that read it: the llama path's
tensors are the plain projection; the list is built on meta-device models;
the norm-weighted projection keeps a post-norm's output orthogonal to the direction."""

from __future__ import annotations

import pytest
import torch

from refusal_core.interventions.linalg import norm_weighted_basis
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.model.tiny_families import tiny_config
from refusal_core.model.writers import residual_writes
from tests.tiny import tiny_model


def test_llama_edit_is_the_plain_projection():
    """W' = W - (W q) q^T along the residual axis, computed here by hand in float32, for the
    embedding, every o_proj and down_proj (to float32 rounding: BLAS paths differ); every
    other parameter untouched, bit for bit."""
    model = tiny_model("llama").model
    directions = torch.randn(2, 64, generator=torch.Generator().manual_seed(4))
    q, _ = torch.linalg.qr(directions.double().T)
    q = q.float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with orthogonalized_weights(model, directions):
        after = {k: v.clone() for k, v in model.state_dict().items()}
    edited = {"model.embed_tokens.weight": -1}
    for layer in range(3):
        edited[f"model.layers.{layer}.self_attn.o_proj.weight"] = 0
        edited[f"model.layers.{layer}.mlp.down_proj.weight"] = 0
    for name, tensor in before.items():
        if name not in edited:
            assert torch.equal(after[name], tensor), name
            continue
        moved = tensor.movedim(edited[name], -1)
        expected = (moved - (moved @ q) @ q.T).movedim(-1, edited[name])
        assert torch.allclose(after[name], expected, rtol=0, atol=1e-7), name
        assert not torch.allclose(after[name], tensor, rtol=0, atol=1e-4), name


@pytest.mark.parametrize(
    "model_type,expected",
    [
        ("mixtral", {"model.layers.0.mlp.experts.down_proj": (1, None, 0.0)}),
        (
            "gpt_oss",
            {
                "model.layers.0.mlp.experts.down_proj": (2, None, 0.0),
                "model.layers.0.mlp.experts.down_proj_bias": (-1, None, 0.0),
                "model.layers.0.self_attn.o_proj.bias": (-1, None, 0.0),
            },
        ),
        (
            "gemma2",
            {
                "model.layers.1.self_attn.o_proj.weight": (0, "model.layers.1.post_attention_layernorm.weight", 1.0),
                "model.layers.1.mlp.down_proj.weight": (0, "model.layers.1.post_feedforward_layernorm.weight", 1.0),
            },
        ),
        (
            "olmo2",
            {"model.layers.0.mlp.down_proj.weight": (0, "model.layers.0.post_feedforward_layernorm.weight", 0.0)},
        ),
        (
            "llama4_text",
            {
                "model.layers.1.feed_forward.experts.down_proj": (2, None, 0.0),
                "model.layers.0.feed_forward.down_proj.weight": (0, None, 0.0),
                "model.layers.1.feed_forward.shared_expert.down_proj.weight": (0, None, 0.0),
            },
        ),
    ],
)
def test_writer_list_on_a_meta_device_model(model_type, expected):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(tiny_config(model_type, 300))
    writes = {w.name: (w.axis, w.norm, w.norm_offset) for w in residual_writes(model)}
    for name, value in expected.items():
        assert writes[name] == value
    assert "model.embed_tokens.weight" in writes
    assert not any("gate" in name or "q_proj" in name or "up_proj" in name for name in writes)


def test_norm_weighted_projection_keeps_the_post_norm_output_orthogonal():
    """Hand-written post-norm y = (offset + w) * x / rms(x) after an edited write x = W' h."""
    g = torch.Generator().manual_seed(0)
    d, inner = 16, 24
    directions = torch.randn(2, d, generator=g, dtype=torch.float64)
    weight = torch.randn(d, inner, generator=g, dtype=torch.float64)
    norm_w = torch.randn(d, generator=g, dtype=torch.float64)
    h = torch.randn(5, inner, generator=g, dtype=torch.float64)
    for offset in (0.0, 1.0):
        basis = norm_weighted_basis(directions, norm_w, offset)
        moved = weight.T  # residual axis last
        edited = (moved - (moved @ basis) @ basis.T).T
        x = h @ edited.T
        y = (offset + norm_w) * x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        assert float((y @ directions.T).abs().max() / y.norm(dim=-1).max()) < 1e-12
        # and the plain projection would not do it
        plain, _ = torch.linalg.qr(directions.T)
        x_plain = h @ (moved - (moved @ plain) @ plain.T)
        y_plain = (offset + norm_w) * x_plain / x_plain.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        assert float((y_plain @ directions.T).abs().max() / y_plain.norm(dim=-1).max()) > 1e-3
