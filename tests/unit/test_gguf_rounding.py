"""Balanced requantization of an edited weight, read back with gguf-py's own dequantizer (the
oracle): the bytes are a valid tensor of the same type, every element stays within one level
step of its value, and the component along the removed direction is far below what nearest
rounding leaves (a random walk of ~sqrt(n) rounding errors, against a greedy correction down
to about one fine step)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from refusal_core.exports.gguf_rounding import balanced_quantize
from tests.unit.test_exports_gguf import _directions, _export, _template_model


def _edited(shape: tuple[int, int], axis: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal(shape) * 0.05
    unit = rng.standard_normal(shape[axis])
    unit /= np.linalg.norm(unit)
    weight -= np.outer(unit, unit @ weight) if axis == 0 else np.outer(weight @ unit, unit)
    return weight.astype(np.float32), unit


def _component(values: np.ndarray, unit: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(unit @ values) if axis == 0 else np.abs(values @ unit)


@pytest.mark.parametrize("type_name", ["Q4_1", "Q8_0"])
@pytest.mark.parametrize("axis", [0, 1])
def test_balanced_rounding_keeps_the_direction_out(type_name, axis):
    weight, unit = _edited((256, 192) if axis == 0 else (192, 256), axis)
    qtype = gguf.GGMLQuantizationType[type_name]
    plain = gguf.quants.quantize(weight, qtype)
    data = balanced_quantize(weight, type_name, unit, axis)
    assert data.shape == plain.shape and data.dtype == plain.dtype
    nearest = gguf.quants.dequantize(plain, qtype).astype(np.float64)
    balanced = gguf.quants.dequantize(data, qtype).astype(np.float64)
    blocks = weight.astype(np.float64).reshape(weight.shape[0], -1, 32)
    if type_name == "Q4_1":
        step = (blocks.max(-1, keepdims=True) - blocks.min(-1, keepdims=True)) / 15
    else:
        step = np.abs(blocks).max(-1, keepdims=True) / 127
    error = np.abs(balanced - weight).reshape(blocks.shape)
    # One level step; at a clipped end of the range (level 127 of Q8_0, 0 or 15 of Q4_1) the
    # float16 rounding of the block's scale (relative 2^-11, times up to 127 levels) adds < 0.07 step.
    assert (error <= step * 1.1 + 1e-7).all()
    assert ((balanced - weight) ** 2).mean() < 1.05 * ((nearest - weight) ** 2).mean()
    assert _component(balanced, unit, axis).max() < 0.1 * _component(nearest, unit, axis).max()


def test_other_types_are_left_to_plain_quantization():
    weight, unit = _edited((64, 64), 0)
    assert balanced_quantize(weight, "Q5_0", unit, 0) is None
    assert balanced_quantize(weight[:, :40], "Q8_0", unit, 0) is None


def test_the_export_balances_the_residual_writers_over_a_template(tmp_path, one_thread):
    """Over a Q8_0 template, the default export leaves far less of the direction in every edited
    writer than ``--rounding nearest``; the untouched tensors are the same bytes in both."""
    loaded, template_dir = _template_model(tmp_path)
    directions = _directions()
    template = str(template_dir / "model.gguf")
    balanced = _export(loaded, directions, tmp_path / "b", source=template)
    nearest = _export(loaded, directions, tmp_path / "n", source=template, rounding="nearest")
    unit = (directions.vectors[0] / directions.vectors[0].norm()).double().numpy()
    read = {
        key: {t.name: t for t in gguf.GGUFReader(out / "model.gguf").tensors}
        for key, out in (("b", balanced), ("n", nearest))
    }
    writers = [name for name in read["b"] if name.endswith(("attn_output.weight", "ffn_down.weight"))]
    assert len(writers) == 2 * loaded.n_layers
    for name in [*writers, "token_embd.weight"]:
        axis = 1 if name == "token_embd.weight" else 0
        left = {
            key: _component(
                gguf.quants.dequantize(read[key][name].data, read[key][name].tensor_type).astype(np.float64),
                unit,
                axis,
            ).max()
            for key in read
        }
        assert left["b"] < 0.2 * left["n"], name
    for name in read["b"]:
        if name not in writers and name != "token_embd.weight":
            assert np.array_equal(read["b"][name].data, read["n"][name].data), name
