"""Layout discovery for families the table does not know, checked against the hand-written
table (an independent oracle) on families the table does know, and its failure message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from refusal_core.model import families
from refusal_core.model.discovery import discover_family, ensure_family
from refusal_core.model.families import UnknownFamilyError
from refusal_core.model.loading import load_model
from refusal_core.model.tiny_families import tiny_family_folder
from refusal_core.model.writers import residual_writes


@pytest.mark.parametrize(
    "model_type", ["llama", "gemma2", "olmo2", "glm4", "gpt2", "phi", "cohere2", "mixtral", "gpt_oss", "gemma3"]
)
def test_discovery_finds_the_tables_writers(model_type, tmp_path, monkeypatch, one_thread):
    """With the family removed from the table, discovery lists the same parameters, the
    same residual axes and the same post-norms (and Gemma's offset 1, OLMo 2's offset 0)."""
    loaded = load_model(str(tiny_family_folder(model_type, tmp_path)))
    table = {w.name: (w.axis, w.norm, w.norm_offset) for w in residual_writes(loaded.model)}
    monkeypatch.setitem(families.FAMILIES, model_type, discover_family(loaded.model))
    found = {w.name: (w.axis, w.norm, w.norm_offset) for w in residual_writes(loaded.model)}
    projector = {name for name in table if "multi_modal_projector" in name}  # image path: table only
    assert found == {name: value for name, value in table.items() if name not in projector}


def test_unknown_family_is_discovered_at_load_and_registered(tmp_path, one_thread):
    folder = tiny_family_folder("starcoder2", tmp_path)
    families.FAMILIES.pop("starcoder2", None)
    try:
        loaded = load_model(str(folder))
        family = families.FAMILIES["starcoder2"]
        assert (family.attn_write, family.mlp_write) == ("self_attn.o_proj", "mlp.c_proj")
        assert ensure_family(loaded.model) is None  # registered once
    finally:
        families.FAMILIES.pop("starcoder2", None)


class _Opaque(nn.Module):
    """A block whose two writes are fused into one Linear: no pair of modules adds up."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):
        return x + 0.5 * self.proj(self.norm(x))


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = type("C", (), {"model_type": "toy"})()
        self.embed = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList(_Opaque(16) for _ in range(3))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 50)

    def get_input_embeddings(self):
        return self.embed

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, use_cache=False):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


def test_failed_discovery_names_what_is_missing():
    with torch.no_grad(), pytest.raises(UnknownFamilyError, match="attention and MLP modules whose outputs add"):
        discover_family(_Toy())
