"""Exporting orthogonalized weights: reloadable, equal to the hooks, atomic, live model untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from refusal_core.directions.base import DirectionSet, load_direction_set
from refusal_core.interventions.export import ExportError, export_orthogonalized
from refusal_core.interventions.hooks import ablate
from tests.tiny import assert_no_hooks, tiny_model

D = 64


def two_directions() -> DirectionSet:
    vectors = torch.randn(2, D, generator=torch.Generator().manual_seed(3))
    provenance = tuple(
        {"model": "tiny", "layer": layer, "position": -1, "method": "dim", "data_hash": "d1ce", "params": {"n": 8}}
        for layer in (1, 2)
    )
    return DirectionSet(vectors=vectors, names=("dim/pos-1/layer1", "som/unit-0"), provenance=provenance)


def snapshot(model) -> tuple[dict, dict, bool]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    tied = model.lm_head.weight is model.get_input_embeddings().weight
    return state, model.config.to_dict(), tied


def assert_unchanged(model, before: tuple[dict, dict, bool]) -> None:
    state, config, tied = before
    after = model.state_dict()
    assert state.keys() == after.keys() and all(torch.equal(state[k], after[k]) for k in state)
    assert model.config.to_dict() == config
    assert (model.lm_head.weight is model.get_input_embeddings().weight) == tied
    assert_no_hooks(model)


@pytest.mark.parametrize("family,tie", [("llama", False), ("llama", True), ("gpt2", False)])
def test_export_reloads_and_matches_hooked_ablation(tmp_path, family, tie):
    loaded = tiny_model(family, tie=tie)
    directions = two_directions()
    ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), ablate(loaded.model, directions):
        hooked = loaded.model(input_ids=ids).logits
    before = snapshot(loaded.model)

    out = export_orthogonalized(loaded, directions, tmp_path / "export")

    assert_unchanged(loaded.model, before)
    exported = AutoModelForCausalLM.from_pretrained(out)
    assert exported.config.tie_word_embeddings is False
    assert exported.lm_head.weight is not exported.get_input_embeddings().weight
    with torch.no_grad():
        reloaded = exported(input_ids=ids).logits
    assert ((reloaded - hooked).abs().max() / hooked.abs().max()).item() < 1e-4
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer("Write a poem")["input_ids"] == loaded.tokenizer("Write a poem")["input_ids"]
    saved = load_direction_set(out / "directions", d_model=D)
    assert saved.names == directions.names and torch.equal(saved.vectors, directions.vectors)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model: ") and f'"{loaded.spec}"' in card.split("---")[1]
    for name in directions.names:
        assert name in card
    assert "d1ce" in card and "attention-out" in card
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_refuses_a_folder_of_other_files_even_with_overwrite(tmp_path):
    loaded = tiny_model("llama")
    target = tmp_path / "export"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(ExportError, match="no .refusal-atlas-export file"):
            export_orthogonalized(loaded, two_directions(), target, overwrite=overwrite)
    assert (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_replaces_an_earlier_export_only_with_overwrite(tmp_path):
    loaded = tiny_model("llama")
    target = tmp_path / "export"
    export_orthogonalized(loaded, two_directions().select(["som/unit-0"]), target)
    with pytest.raises(ExportError, match="--overwrite"):
        export_orthogonalized(loaded, two_directions(), target)
    assert load_direction_set(target / "directions").names == ("som/unit-0",)
    export_orthogonalized(loaded, two_directions(), target, overwrite=True)
    assert load_direction_set(target / "directions").names == two_directions().names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


@pytest.mark.parametrize("failing", ["model", "tokenizer"])
def test_failed_export_leaves_model_and_disk_as_they_were(tmp_path, monkeypatch, failing):
    loaded = tiny_model("llama", tie=True)
    before = snapshot(loaded.model)

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    # The model fails while its weights are edited and its config swapped; the tokenizer after.
    owner = loaded.model if failing == "model" else loaded.tokenizer.unwrapped
    monkeypatch.setattr(owner, "save_pretrained", broken_save)
    with pytest.raises(OSError, match="disk full"):
        export_orthogonalized(loaded, two_directions(), tmp_path / "export")
    assert_unchanged(loaded.model, before)
    assert list(tmp_path.iterdir()) == []


def test_gemma2_export_is_exact_through_the_post_norms(tmp_path):
    """Gemma 2 normalises each write before the residual add; the export projects the
    writes against d * (1 + w), and the reloaded model's residual stream is orthogonal to d."""
    from transformers import AutoModelForCausalLM

    loaded = tiny_model("gemma2")
    directions = two_directions()
    before = snapshot(loaded.model)
    out = export_orthogonalized(loaded, directions, tmp_path / "export")
    assert_unchanged(loaded.model, before)
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float64)
    ids = torch.randint(3, 300, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        states = reloaded(input_ids=ids, output_hidden_states=True).hidden_states
    q, _ = torch.linalg.qr(directions.vectors.double().T)
    # hidden_states[-1] has the final norm applied; the residual points are the others.
    for h in states[:-1]:
        assert float(((h @ q).norm(dim=-1) / h.norm(dim=-1)).max()) < 1e-5


def test_width_mismatch_refused(tmp_path):
    loaded = tiny_model("llama")
    wrong = DirectionSet(torch.randn(1, 32), ("a",), ({"model": "other"},))
    with pytest.raises(ValueError, match="width"):
        export_orthogonalized(loaded, wrong, tmp_path / "export")
    assert not (tmp_path / "export").exists()
