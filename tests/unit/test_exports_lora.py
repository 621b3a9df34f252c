"""The LoRA adapter export: PEFT loads it over the base model and gives the orthogonalized
model's logits (the oracle: ``orthogonalized_weights``, the in-memory weight edit) on tiny
models of each layout the writer list has here (Linear writers, tied embeddings, GPT-2's
Conv1D writers with biases and two embeddings, Qwen2, and fused MoE experts through\nPEFT's ``target_parameters``)."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.exports.lora import LoraUnsupported
from refusal_core.exports.registry import ExportRequest, get_format
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.model.fingerprint import weights_sha256
from tests.tiny import tiny_model

IDS = torch.tensor([[1, 5, 9, 30, 44, 7, 12, 3]])


def _directions(k: int = 2, seed: int = 1) -> DirectionSet:
    generator = torch.Generator().manual_seed(seed)
    return DirectionSet(
        vectors=torch.randn(k, 64, generator=generator),
        names=tuple(f"d{i}" for i in range(k)),
        provenance=tuple({"layer": 1} for _ in range(k)),
    )


def _model(family: str, tie: bool, folder):
    """The tiny model of ``family``: the test zoo's, else one built from transformers' config and loaded from a folder."""
    from refusal_core.model.loading import load_model
    from refusal_core.model.tiny import FAMILY_CONFIGS
    from refusal_core.model.tiny_families import tiny_family_folder

    if family in FAMILY_CONFIGS:
        return tiny_model(family, tie=tie)
    return load_model(str(tiny_family_folder(family, folder)))


def _write(loaded, directions, out):
    fmt = get_format("lora")
    return fmt.write(ExportRequest(loaded=loaded, directions=directions, out_dir=out, settings=fmt.settings()))


def _three_logits(loaded, directions, adapter):
    """The base model's logits, the orthogonalized model's (the oracle: weights edited in
    memory) and those of base + adapter loaded from disk by PEFT, on one fixed input; and that
    PEFT model."""
    with torch.no_grad():
        base = loaded.model(IDS).logits
        with orthogonalized_weights(loaded.model, directions):
            expected = loaded.model(IDS).logits
        adapted = peft.PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(adapter))
        got = adapted(IDS).logits
    return base, expected, got, adapted


@pytest.mark.parametrize(
    "family,tie",
    [("llama", False), ("llama", True), ("gpt2", False), ("qwen2", False), ("gemma2", False), ("gemma3_text", False)],
)
def test_peft_adapter_reproduces_orthogonalized_logits(tmp_path, one_thread, family, tie):
    loaded = _model(family, tie, tmp_path / "model")
    directions = _directions()
    before = weights_sha256(loaded.model)
    out = _write(loaded, directions, tmp_path / "adapter")
    assert weights_sha256(loaded.model) == before  # the shared model is never edited
    base, expected, got, adapted = _three_logits(loaded, directions, out)
    assert (base - expected).abs().max() > 0.1  # the edit matters, so equality below means something
    assert (got - expected).abs().max() < 2e-5
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 2 and config["lora_alpha"] == 2
    if tie:  # the head keeps the original matrix although the embedding is adapted
        head = adapted.get_output_embeddings().weight
        assert torch.equal(head, loaded.model.get_input_embeddings().weight)


def test_adapter_rank_is_the_number_of_independent_directions(tmp_path, one_thread):
    loaded = tiny_model("llama")
    two = _directions(2)
    dependent = DirectionSet(
        vectors=torch.cat([two.vectors, (two.vectors[0] - 2 * two.vectors[1])[None]]),
        names=("a", "b", "c"),
        provenance=({}, {}, {}),
    )
    out = _write(loaded, dependent, tmp_path / "adapter")
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 2


def test_adapter_size_is_estimated_before_writing(tmp_path, one_thread):
    loaded = tiny_model("llama")
    directions = _directions()
    fmt = get_format("lora")
    estimate = fmt.estimate_size(loaded, directions, fmt.settings())
    out = _write(loaded, directions, tmp_path / "adapter")
    written = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    # Factors: per writer r * (d + n) float32 values, counted independently here.
    params = dict(loaded.model.named_parameters())
    factors = sum(
        2 * (64 + params[name].numel() // 64) * 4
        for name in params
        if name.endswith(("o_proj.weight", "down_proj.weight", "embed_tokens.weight"))
    )
    assert factors < written <= estimate < 2 * written + 20_000


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_fused_experts_adapter_reproduces_the_orthogonalized_model(tmp_path, one_thread, family):
    """Fused 3-D expert tensors (``[E, d, n]`` for Mixtral and Qwen3-MoE, ``is_transposed``
    ``[E, n, d]`` with ``[E, d]`` expert biases for gpt-oss) go through PEFT's
    ``target_parameters``, next to the Linear ``target_modules``, in one adapter read from disk.

    Tolerance: the two models compute the same function in float32 with a different order
    of rounding (weights edited in place against base + B A added per expert), so the logits
    may differ by a small multiple of float32's epsilon times their scale: 100 eps max|logit|.
    """
    loaded = _model(family, False, tmp_path / "model")
    directions = _directions()
    before = weights_sha256(loaded.model)
    out = _write(loaded, directions, tmp_path / "adapter")
    assert weights_sha256(loaded.model) == before
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_parameters"] and all(
        name.endswith("experts.down_proj") or name.endswith("experts.down_proj_bias")
        for name in config["target_parameters"]
    )
    base, expected, got, _ = _three_logits(loaded, directions, out)
    written = sum(path.stat().st_size for path in out.rglob("*") if path.is_file())
    fmt = get_format("lora")
    assert written <= fmt.estimate_size(loaded, directions, fmt.settings()) < 2 * written + 20_000
    assert (base - expected).abs().max() > 0.1
    tolerance = 100 * torch.finfo(torch.float32).eps * expected.abs().max()
    assert (got - expected).abs().max() < tolerance


@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe", "gpt_oss"])
def test_fused_experts_adapter_leaves_nothing_along_the_directions(tmp_path, one_thread, family):
    """In float64, the residual stream after the embedding and every block of base + adapter has
    no component along the directions (the oracle is the residual itself, not the export's
    arithmetic). The factors are stored in float32, so what is left is that rounding: each edited
    weight keeps a part of order eps32 (1.2e-7) of itself along ``d``, bounded here by 1e-6 of
    the norm (measured: about 1e-8), against the base model's share of order 0.1."""
    from transformers import AutoModelForCausalLM

    from refusal_core.model.loading import load_model
    from refusal_core.model.tiny_families import tiny_family_folder

    folder = tiny_family_folder(family, tmp_path / "model")
    directions = _directions()
    out = _write(load_model(str(folder)), directions, tmp_path / "adapter")
    basis = torch.linalg.qr(directions.vectors.double().T).Q  # [d, k], independent of the export
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, experts_implementation="eager")
    adapted = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(out))

    def worst(model) -> float:
        with torch.no_grad():
            hidden = model(IDS, output_hidden_states=True).hidden_states[:-1]  # the last is after the final norm
        return max(float(((h @ basis).norm(dim=-1) / h.norm(dim=-1)).max()) for h in hidden)

    assert worst(base) > 0.01
    assert worst(adapted) < 1e-6


def test_a_writer_peft_cannot_hold_is_named_not_left_out(monkeypatch, tmp_path, one_thread):
    """A 1-D parameter of a module PEFT does not adapt (neither a module nor a 2-D/3-D parameter target)."""
    from refusal_core.exports import lora
    from refusal_core.model.writers import ResidualWrite

    loaded = tiny_model("llama")
    offset = torch.nn.Parameter(torch.randn(64), requires_grad=False)
    loaded.model.model.layers[0].mlp.register_parameter("out_offset", offset)
    writes = (ResidualWrite(name="model.layers.0.mlp.out_offset", axis=-1),)
    monkeypatch.setattr(lora, "residual_writes", lambda model: writes)
    with pytest.raises(LoraUnsupported, match="out_offset"):
        _write(loaded, _directions(), tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_a_write_through_a_post_norm_is_orthogonalized_against_the_norm_weighted_directions(monkeypatch, one_thread):
    """The writer list may say a write reaches the residual through an elementwise norm (Gemma's
    post-norms): the adapter must then make ``(d * (offset + w))ᵀ W' = 0``, checked by hand."""
    from refusal_core.exports import lora
    from refusal_core.model.writers import ResidualWrite

    loaded = tiny_model("llama")
    norm = "model.layers.0.post_attention_layernorm.weight"
    with torch.no_grad():
        loaded.model.get_parameter(norm).copy_(torch.linspace(-0.5, 0.5, 64))
    writes = (ResidualWrite(name="model.layers.0.self_attn.o_proj.weight", axis=0, norm=norm, norm_offset=1.0),)
    monkeypatch.setattr(lora, "residual_writes", lambda model: writes)
    directions = _directions()
    tensors, config = lora.adapter_tensors(loaded, directions)
    key = "base_model.model.model.layers.0.self_attn.o_proj"
    weight = loaded.model.get_parameter(writes[0].name).detach().double()
    edited = weight + tensors[f"{key}.lora_B.weight"].double() @ tensors[f"{key}.lora_A.weight"].double()
    gain = 1.0 + loaded.model.get_parameter(norm).detach().double()
    weighted = directions.vectors.double() * gain
    assert (weighted @ edited).abs().max() < 1e-5 * (weighted @ weight).abs().max()
    assert config["target_modules"] == ["model.layers.0.self_attn.o_proj"]
