"""GGUF export, checked through transformers' own GGUF loader (a second code path for names,
layouts and the rotary permutation) on tiny Llama models: from scratch in F32 the loaded
model's logits equal the orthogonalized model's; over a quantized template, untouched tensors
are the template's bytes, edited ones keep their type and are orthogonal to the direction up
to quantization rounding, and a tied template gains an ``output.weight`` holding the original
embedding."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from refusal_core.directions.base import DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.exports.gguf_scratch import write_from_scratch
from refusal_core.exports.gguf_tensors import tensor_bytes
from refusal_core.exports.registry import ExportRequest, get_format
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.model.loading import LoadedModel
from tests.tiny import tiny_model

IDS = torch.tensor([[1, 5, 9, 30, 44, 7, 12]])


def _directions(k: int = 1) -> DirectionSet:
    generator = torch.Generator().manual_seed(5)
    return DirectionSet(
        vectors=torch.randn(k, 64, generator=generator),
        names=tuple(f"d{i}" for i in range(k)),
        provenance=tuple({"layer": 1} for _ in range(k)),
    )


def _export(loaded, directions, out, **settings):
    fmt = get_format("gguf")
    return fmt.write(
        ExportRequest(loaded=loaded, directions=directions, out_dir=out, settings=fmt.settings(**settings))
    )


def _load(folder):
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32).eval()


@pytest.mark.parametrize("tie", [False, True])
def test_from_scratch_f32_loads_in_transformers_as_the_orthogonalized_model(tmp_path, one_thread, tie):
    loaded = tiny_model("llama", tie=tie)
    directions = _directions(2)
    out = _export(loaded, directions, tmp_path / "g", tensor_type="F32")
    with torch.no_grad():
        with orthogonalized_weights(loaded.model, directions):
            expected = loaded.model(IDS).logits
        plain = loaded.model(IDS).logits
        got = _load(out)(IDS).logits
    assert (plain - expected).abs().max() > 0.1
    assert (got - expected).abs().max() < 1e-5


def _template_model(tmp_path) -> tuple[LoadedModel, object]:
    """A tied tiny Llama written unedited as a Q8_0 GGUF (no output.weight, like SmolLM2's) and
    loaded back: a model whose weights are exactly the template's dequantized values, as the
    bundled model is for its GGUF."""
    tiny = tiny_model("llama", tie=True)
    arrays = {name: p.detach().numpy().copy() for name, p in tiny.model.named_parameters(remove_duplicate=False)}
    source = tmp_path / "template"
    source.mkdir()
    write_from_scratch(tiny, arrays, source / "model.gguf", "Q8_0")
    model = _load(source)
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tiny.tokenizer, spec="tiny-gguf", source=str(source)), source


def test_over_a_quantized_template(tmp_path, one_thread):
    loaded, template_dir = _template_model(tmp_path)
    template = template_dir / "model.gguf"
    directions = _directions()
    out = _export(loaded, directions, tmp_path / "g", source=str(template))
    before, after = tensor_bytes(template), tensor_bytes(out / "model.gguf")
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(template).tensors}
    new_types = {t.name: t.tensor_type for t in gguf.GGUFReader(out / "model.gguf").tensors}
    edited = {
        name
        for name in before
        if name.endswith(("attn_output.weight", "ffn_down.weight")) or name == "token_embd.weight"
    }
    assert "output.weight" not in before and set(after) == set(before) | {"output.weight"}
    for name in before:
        assert new_types[name] == types[name]
        assert (after[name] == before[name]) == (name not in edited), name
    assert after["output.weight"] == before["token_embd.weight"]  # the head keeps the original matrix
    unit = (directions.vectors[0] / directions.vectors[0].norm()).double().numpy()
    reader = {t.name: t for t in gguf.GGUFReader(out / "model.gguf").tensors}
    old = {t.name: t for t in gguf.GGUFReader(template).tensors}
    for name in ("blk.1.attn_output.weight", "blk.2.ffn_down.weight"):
        new_w = gguf.quants.dequantize(reader[name].data, reader[name].tensor_type).astype(np.float64)
        old_w = gguf.quants.dequantize(old[name].data, old[name].tensor_type).astype(np.float64)
        assert np.abs(unit @ new_w).max() < 0.05 * np.abs(unit @ old_w).max()
    with torch.no_grad():
        with orthogonalized_weights(loaded.model, directions):
            expected = loaded.model(IDS).logits
        plain = loaded.model(IDS).logits
        got = _load(out)(IDS).logits
    # Only quantization rounding of the edited tensors separates the two.
    assert (got - expected).abs().max() < 0.1 * (plain - expected).abs().max()


def test_template_of_another_model_is_refused_before_writing(tmp_path, one_thread):
    _, template_dir = _template_model(tmp_path)
    other = tiny_model("llama")
    other.model.model.layers = other.model.model.layers[:2]
    other.model.config.num_hidden_layers = 2
    with pytest.raises(SettingsError, match="layers"):
        _export(other, _directions(), tmp_path / "g", source=str(template_dir / "model.gguf"))
    assert not (tmp_path / "g").exists()


def test_edited_tensors_in_f32_over_a_template_give_the_orthogonalized_logits(tmp_path, one_thread):
    loaded, template_dir = _template_model(tmp_path)
    directions = _directions(2)
    out = _export(loaded, directions, tmp_path / "g", source=str(template_dir / "model.gguf"), edited_type="F32")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(out / "model.gguf").tensors}
    assert types["blk.0.attn_output.weight"] == "F32" and types["blk.0.attn_q.weight"] == "Q8_0"
    with torch.no_grad():
        with orthogonalized_weights(loaded.model, directions):
            expected = loaded.model(IDS).logits
        got = _load(out)(IDS).logits
    assert (got - expected).abs().max() < 1e-5  # untouched tensors are exact copies, edited ones exact floats
