"""The Export page offers every registered format with its size estimated before writing,
and writes the chosen one (here the LoRA adapter, checked with PEFT against the in-memory
weight edit) with its manifest."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import peft
import torch

from refusal_core.exports.registry import formats
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.model.loading import load_model
from tests.unit.test_app import _assert_ok, _with_activations, _workspace, tiny_app  # noqa: F401 (fixture)


def test_export_page_lists_every_format_with_a_size_and_writes_an_adapter(tmp_path, one_thread, monkeypatch):
    monkeypatch.setenv("REFUSAL_ATLAS_EXPORT_ROOT", str(tmp_path))  # dashboard exports go under the export root
    at = _with_activations()
    at.switch_page("app_pages/export.py").run()
    _assert_ok(at)
    table = at.dataframe[-1].value
    titles = [fmt.title for fmt in formats().values()]
    assert list(table["format"]) == titles
    assert all(size.endswith(("MB", "kB")) for size in table["size on disk (estimated)"])
    lora = formats()["lora"].title
    at.radio(key="export_model_format").set_value(lora).run()
    out = tmp_path / "adapter"
    at.text_input(key="export_model_dir_lora").set_value(str(out)).run()
    at.button(key="export_model_run").click().run()
    _assert_ok(at)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["invoked"].startswith("dashboard Export page")
    ws = _workspace(at)
    name = at.selectbox(key="export_model_set").value
    chosen = ws.direction_sets[name].select(at.multiselect(key=f"export_model_names_{name}").value)
    model = load_model("tiny:llama").model  # the model the page exported (the tiny stand-in, seeded)
    ids = torch.tensor([[1, 5, 9, 30, 44]])
    with torch.no_grad():
        with orthogonalized_weights(model, chosen):
            expected = model(ids).logits
        got = peft.PeftModel.from_pretrained(copy.deepcopy(model), str(Path(out)))(ids).logits
    assert (got - expected).abs().max() < 2e-5
