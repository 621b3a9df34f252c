"""The streaming export (refusal_core.exports.folder) against two independent oracles: the
in-memory export of the same model (same tensors, to the stored dtype's rounding) and the
exported model reloaded in plain transformers (no residual component along the directions).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from refusal_core.directions.base import DirectionSet
from refusal_core.errors import UserError
from refusal_core.exports.experts import expert_keys
from refusal_core.exports.files import WeightFilesError, find_model_files
from refusal_core.exports.folder import plan_export, stream_export
from refusal_core.exports.safetensors_io import read_header
from refusal_core.interventions.export import export_orthogonalized
from refusal_core.model.families import FAMILIES, Family, model_parts
from refusal_core.model.loading import load_model
from refusal_core.model.writers import ResidualWrite
from tests.tiny import tiny_model, tiny_tokenizer


def _directions(d_model: int, k: int = 2, seed: int = 3) -> DirectionSet:
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(k, d_model, generator=generator)
    return DirectionSet(vectors, tuple(f"d{i}" for i in range(k)), tuple({"method": "test"} for _ in range(k)))


def _save(model, folder: Path, dtype=torch.float32, shard="40KB") -> Path:
    model.to(dtype).save_pretrained(folder, max_shard_size=shard)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(folder.glob("model*.safetensors")):
        with safe_open(path, framework="pt") as handle:
            for name in handle.keys():
                out[name] = handle.get_tensor(name)
    return out


def _worst_residual_cosine(folder: Path, directions: DirectionSet) -> float:
    """max |h.d|/|h| over every layer's output, every position and every direction, float64."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, experts_implementation="eager")
    layers = model_parts(model).layers
    outputs = []
    hooks = [
        layer.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
        for layer in layers
    ]
    try:
        ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            embedded = model.get_input_embeddings()(ids)
            model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    units = torch.nn.functional.normalize(directions.vectors.double(), dim=-1)
    worst = 0.0
    for hidden in [embedded, *outputs]:
        cosine = (hidden @ units.T).abs() / hidden.norm(dim=-1, keepdim=True)
        worst = max(worst, float(cosine.max()))
    return worst


def test_safetensors_headers_round_trip(tmp_path):
    folder = _save(tiny_model("llama").model, tmp_path / "src")
    files = find_model_files(str(folder))
    assert files is not None and len(files.shards) > 2, "the fixture must be sharded"
    reference = _tensors(folder)
    assert set(files.weight_map) == set(reference)
    for shard in files.shards:
        for entry in read_header(folder / shard).entries:
            assert entry.shape == tuple(reference[entry.name].shape)


@pytest.mark.parametrize(
    ("family", "tie", "dtype"),
    [
        ("llama", False, torch.float32),
        ("llama", True, torch.float32),
        ("llama", False, torch.bfloat16),
        ("llama", True, torch.bfloat16),
        ("gpt2", True, torch.float32),
        ("qwen2", False, torch.float32),
    ],
)
def test_streaming_equals_in_memory_and_removes_direction(tmp_path, family, tie, dtype):
    source = _save(tiny_model(family, tie=tie).model, tmp_path / "src", dtype=dtype)
    loaded = load_model(str(source), dtype="float32")
    directions = _directions(loaded.d_model)
    reference = export_orthogonalized(loaded, directions, tmp_path / "memory")
    streamed = stream_export(find_model_files(str(source)), directions, tmp_path / "stream", spec=str(source))
    ours, theirs = _tensors(streamed), _tensors(reference)
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert tensor.dtype == dtype, name
        expected = theirs[name].to(dtype)  # the in-memory export is float32; round it to the stored dtype
        tolerance = 1e-6 if dtype == torch.float32 else 2.0**-7
        assert torch.allclose(tensor.float(), expected.float(), rtol=tolerance, atol=1e-7), name
    config = json.loads((streamed / "config.json").read_text())
    assert config["tie_word_embeddings"] is False
    assert [p.name for p in sorted(streamed.glob("model*.safetensors"))] == [
        p.name for p in sorted(source.glob("model*.safetensors"))
    ]
    original = _tensors(source)
    if tie:  # the unembedding keeps the original matrix, bit for bit
        embedding = "transformer.wte.weight" if family == "gpt2" else "model.embed_tokens.weight"
        assert torch.equal(ours["lm_head.weight"], original[embedding])
    index = json.loads((streamed / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ours)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in ours.values())
    # An independent check of the mathematics: float32 files leave no residual component.
    if dtype == torch.float32:
        assert _worst_residual_cosine(streamed, directions) <= 1e-4
        assert _worst_residual_cosine(source, directions) > 1e-2  # the check can fail


def test_streaming_export_writes_the_same_folder_files(tmp_path):
    source = _save(tiny_model("llama").model, tmp_path / "src")
    loaded = load_model(str(source))
    directions = _directions(loaded.d_model, k=1)
    reference = export_orthogonalized(loaded, directions, tmp_path / "memory")
    streamed = stream_export(find_model_files(str(source)), directions, tmp_path / "stream", spec=str(source))

    def others(folder: Path) -> set[str]:  # the weights themselves keep the source's sharding
        return {p.name for p in folder.iterdir() if not p.name.startswith("model")}

    assert others(streamed) == others(reference)
    reloaded = load_model(str(streamed))
    assert reloaded.tokenizer.pad_token == loaded.tokenizer.pad_token


def test_refuses_before_writing(tmp_path):
    source = _save(tiny_model("llama").model, tmp_path / "src")
    files = find_model_files(str(source))
    with pytest.raises(UserError, match="64"):
        stream_export(files, _directions(32), tmp_path / "out", spec="x")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        stream_export(files, _directions(64), tmp_path / "busy", spec="x")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_missing_writer_tensor_is_named(tmp_path):
    source = _save(tiny_model("llama").model, tmp_path / "src", shard="10MB")
    from safetensors.torch import load_file, save_file

    tensors = load_file(source / "model.safetensors")
    tensors["model.layers.1.mlp.down_proj.renamed"] = tensors.pop("model.layers.1.mlp.down_proj.weight")
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightFilesError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        plan_export(find_model_files(str(source)))


# --- Families whose writer list is being extended on the `fam` branch (Gemma post-norms, MoE experts) ---


def _tiny_moe(model_type: str):
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tiny_tokenizer()),
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts=4,
        num_experts_per_tok=2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.08)
    return model


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_save_pretrained_stores_experts_per_expert_and_the_map_finds_them(tmp_path, model_type):
    """transformers 5 writes fused expert parameters back as one tensor per expert; the map
    from the fused parameter to those tensors must list exactly the stacked slices, in order."""
    model = _tiny_moe(model_type)
    folder = _save(model, tmp_path / "src", shard="20KB")
    files = find_model_files(str(folder))
    fused = model.model.layers[1].mlp.experts.down_proj
    assert "model.layers.1.mlp.experts.down_proj" not in files.weight_map
    keys = expert_keys("model.layers.1.mlp.experts.down_proj", fused.shape[0], model_type, files.weight_map)
    stored = _tensors(folder)
    assert keys is not None and torch.equal(torch.stack([stored[key] for key in keys]), fused.detach())


def _moe_writes(model) -> tuple[ResidualWrite, ...]:
    """The residual writers of a Mixtral-style model, listed by hand: the independent list
    the streaming path is checked against until the family table knows MoE experts."""
    writes = [ResidualWrite("model.embed_tokens.weight", -1)]
    for index in range(len(model.model.layers)):
        writes.append(ResidualWrite(f"model.layers.{index}.self_attn.o_proj.weight", 0))
        writes.append(ResidualWrite(f"model.layers.{index}.mlp.experts.down_proj", 1))
    return tuple(writes)


@pytest.mark.parametrize("model_type", ["mixtral", "qwen3_moe"])
def test_moe_streaming_export_edits_every_expert(tmp_path, monkeypatch, model_type):
    """With the hand-made writer list, the per-expert tensors on disk are edited and the
    reloaded model has no residual component along the directions."""
    model = _tiny_moe(model_type)
    source = _save(model, tmp_path / "src", shard="20KB")
    import refusal_core.exports.folder as folder_module

    monkeypatch.setattr(folder_module, "residual_writes", _moe_writes)
    if model_type not in FAMILIES:
        family = Family(
            layers="model.layers",
            embeddings=("model.embed_tokens",),
            attn_write="self_attn.o_proj",
            mlp_write="mlp.experts",
            final_norm="model.norm",
        )
        monkeypatch.setitem(FAMILIES, model_type, family)
    directions = _directions(32)
    out = stream_export(find_model_files(str(source)), directions, tmp_path / "stream", spec="moe")
    assert _worst_residual_cosine(out, directions) <= 1e-4
    assert _worst_residual_cosine(source, directions) > 1e-2


@pytest.mark.parametrize("family", ["gemma2", "mixtral"])
def test_streaming_matches_in_memory_for_families_of_the_writer_list(tmp_path, family):
    """Gemma 2 (post-norms) and Mixtral (fused experts, stored one tensor per expert) through the
    real writer list: both exports must agree and leave no residual component along the directions."""
    model = tiny_model(family).model if family in ("gemma2",) else _tiny_moe(family)
    source = _save(model, tmp_path / "src", shard="20KB")
    directions = _directions(model.config.hidden_size)
    loaded = load_model(str(source))
    streamed = stream_export(find_model_files(str(source)), directions, tmp_path / "stream", spec=family)
    reference = export_orthogonalized(loaded, directions, tmp_path / "memory")
    ours, theirs = _tensors(streamed), _tensors(reference)
    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert torch.allclose(tensor, theirs[name], rtol=1e-6, atol=1e-7), name
    assert _worst_residual_cosine(streamed, directions) <= 1e-4


def test_cli_streams_a_folder_and_matches_in_memory(tmp_path, capsys):
    from refusal_core.cli import main

    source = _save(tiny_model("llama", tie=True).model, tmp_path / "src")
    _directions(64, k=1).save(tmp_path / "dirs")
    streamed, memory = tmp_path / "streamed", tmp_path / "memory"
    assert (
        main(
            [
                "export-model",
                "--model",
                str(source),
                "--ablate",
                str(tmp_path / "dirs"),
                "--out",
                str(streamed),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["streamed"] is True
    assert (
        main(
            [
                "export-model",
                "--model",
                str(source),
                "--ablate",
                str(tmp_path / "dirs"),
                "--out",
                str(memory),
                "--in-memory",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["streamed"] is False
    ours, theirs = _tensors(streamed), _tensors(memory)
    assert set(ours) == set(theirs) and all(torch.allclose(ours[n], theirs[n], rtol=1e-6, atol=1e-7) for n in ours)
    # A width mismatch is refused before anything is written.
    _directions(32, k=1).save(tmp_path / "narrow")
    assert (
        main(
            ["export-model", "--model", str(source), "--ablate", str(tmp_path / "narrow"), "--out", str(tmp_path / "x")]
        )
        == 2
    )
    assert not (tmp_path / "x").exists()


def test_copy_without_copy_file_range_gives_the_same_files(tmp_path, monkeypatch):
    source = _save(tiny_model("llama", tie=True).model, tmp_path / "src")
    directions = _directions(64)
    kernel = stream_export(find_model_files(str(source)), directions, tmp_path / "kernel", spec="x")

    def unsupported(*args):
        raise OSError("not supported here")

    monkeypatch.setattr("os.copy_file_range", unsupported)
    chunked = stream_export(find_model_files(str(source)), directions, tmp_path / "chunked", spec="x")
    for path in sorted(kernel.glob("model*.safetensors")):
        assert path.read_bytes() == (chunked / path.name).read_bytes(), path.name


def test_hub_cache_snapshot_is_found_without_network(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-llama"
    _save(tiny_model("llama").model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = find_model_files("acme/tiny-llama")
    assert files is not None and files.folder == repo / "snapshots" / commit and len(files.shards) > 2
    assert find_model_files("acme/not-cached") is None


def test_cli_falls_back_to_memory_without_files(tmp_path, capsys):
    from refusal_core.cli import main

    _directions(64, k=1).save(tmp_path / "dirs")
    assert (
        main(
            [
                "export-model",
                "--model",
                "tiny:llama",
                "--ablate",
                str(tmp_path / "dirs"),
                "--out",
                str(tmp_path / "o"),
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["streamed"] is False


def test_integer_writer_tensor_is_refused_before_writing(tmp_path):
    from safetensors.torch import load_file, save_file

    source = _save(tiny_model("llama").model, tmp_path / "src", shard="10MB")
    tensors = load_file(source / "model.safetensors")
    tensors["model.layers.0.self_attn.o_proj.weight"] = tensors["model.layers.0.self_attn.o_proj.weight"].to(torch.int8)
    save_file(tensors, source / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightFilesError, match=r"o_proj\.weight.*I8"):
        stream_export(find_model_files(str(source)), _directions(64), tmp_path / "out", spec="x")
    assert not (tmp_path / "out").exists()
