"""llama.cpp control vectors: read back with gguf's own reader (architecture, keys, the
1-based ``direction.K`` tensors, the scale), and the layer convention checked against a
second code path: a plain forward hook that adds ``direction.K`` to block K's output, as
llama.cpp does, must give the logits of our activation addition at the input of block K+1."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.exports.control_vector import FILE_NAME
from refusal_core.exports.registry import ExportRequest, get_format
from refusal_core.interventions.hooks import apply_intervention
from refusal_core.interventions.spec import Intervention
from tests.tiny import tiny_model

IDS = torch.tensor([[1, 5, 9, 30, 44, 7]])


def _directions() -> DirectionSet:
    generator = torch.Generator().manual_seed(3)
    return DirectionSet(
        vectors=torch.randn(2, 64, generator=generator) * 4,
        names=("first", "second"),
        provenance=({"layer": 2}, {"layer": 1}),
    )


def _write(loaded, out, **settings):
    fmt = get_format("control-vector")
    return fmt.write(
        ExportRequest(loaded=loaded, directions=_directions(), out_dir=out, settings=fmt.settings(**settings))
    )


def test_file_holds_the_scaled_vectors_under_llama_cpp_names(tmp_path, one_thread):
    loaded = tiny_model("llama")
    out = _write(loaded, tmp_path / "cv", direction="second", layers="2", coefficient=-1.5)
    reader = gguf.GGUFReader(out / FILE_NAME)
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == "llama"
    assert reader.fields["controlvector.layer_count"].contents() == 1
    assert [tensor.name for tensor in reader.tensors] == ["direction.1"]
    tensor = reader.tensors[0]
    assert tensor.tensor_type == gguf.GGMLQuantizationType.F32 and list(tensor.shape) == [64]
    expected = (-1.5 * _directions().vectors[1].double()).float().numpy()
    np.testing.assert_array_equal(np.asarray(tensor.data), expected)


def test_direction_k_lands_where_actadd_at_layer_k_plus_1_adds(tmp_path, one_thread):
    loaded = tiny_model("llama")
    model = loaded.model
    out = _write(loaded, tmp_path / "cv")  # the first direction, at its own layer (2)
    reader = gguf.GGUFReader(out / FILE_NAME)
    (tensor,) = reader.tensors
    k = int(tensor.name.split(".")[1])
    vector = torch.from_numpy(np.array(tensor.data))

    def llama_cpp_style(module, args, output):  # add after block k's residual add
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden + vector
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = model.model.layers[k].register_forward_hook(llama_cpp_style)
    try:
        with torch.no_grad():
            emulated = model(IDS).logits
    finally:
        handle.remove()
    ours = Intervention(name="actadd", actadd=_directions().vectors[0], actadd_layer=2, actadd_coeff=1.0)
    with torch.no_grad(), apply_intervention(model, ours):
        expected = model(IDS).logits
    with torch.no_grad():
        plain = model(IDS).logits
    assert k == 1
    assert (plain - expected).abs().max() > 0.05
    assert (emulated - expected).abs().max() < 1e-5


@pytest.mark.parametrize("layers", ["0", "1", "3", "x"])
def test_layers_llama_cpp_cannot_steer_are_refused(tmp_path, one_thread, layers):
    with pytest.raises(SettingsError, match="layers|llama.cpp"):
        _write(tiny_model("llama"), tmp_path / "cv", layers=layers)
    assert not (tmp_path / "cv").exists()
