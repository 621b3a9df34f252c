"""The Export page streams a model that came from files, without the shared model's lock."""

from __future__ import annotations

from pathlib import Path

import torch
from streamlit.testing.v1 import AppTest

from refusal_core.directions.base import DirectionSet
from refusal_core.interventions.export_target import is_export
from refusal_core.model.families import model_lock
from tests.app_hooks import no_umap_warm_up, use_tiny_models
from tests.tiny import tiny_model, tiny_tokenizer

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def test_export_page_streams_while_another_session_holds_the_model(tmp_path, monkeypatch):
    import app_pages._state as state

    use_tiny_models(monkeypatch)
    monkeypatch.setenv("REFUSAL_ATLAS_EXPORT_ROOT", str(tmp_path))  # exports go under the export root
    no_umap_warm_up(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = tmp_path / "model"
    tiny_model("llama").model.save_pretrained(source, max_shard_size="40KB")
    tiny_tokenizer().save_pretrained(source)
    seen = []
    real = state.load_model_for_app
    monkeypatch.setattr(state, "load_model_for_app", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])

    at = AppTest.from_file(APP, default_timeout=60).run()
    at.radio(key="atlas_model_choice").set_value("Hugging Face id or local path").run()
    at.text_input(key="atlas_model_path").set_value(str(source)).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    loaded = seen[-1]
    spaces = at.session_state["atlas_workspaces"]
    workspace = next(space for key, space in spaces.items() if key.startswith(f"{source}|"))
    workspace.add_set("mine", DirectionSet(torch.randn(1, 64), ("d",), ({"method": "test"},)))
    at.switch_page("app_pages/export.py").run()
    out = tmp_path / "exported"
    at.text_input(key="export_model_dir_folder").set_value(str(out)).run()
    assert any("shard by shard" in caption.value for caption in at.caption)
    # Another session is in the middle of an intervention: it holds the model lock throughout.
    with model_lock(loaded.model):
        at.button(key="export_model_run").click().run(timeout=30)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert is_export(out) and len(list(out.glob("model-*.safetensors"))) > 2
