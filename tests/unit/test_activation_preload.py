"""The memory estimate from a model's files, before it is loaded: the weights term against
the safetensors library's own view of the tensors (independent oracle), the sizes against
the estimate after loading, and ``--max-memory`` refused (exit 2) without loading the model."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import refusal_core.model.loading as loading
from refusal_core.activations.extract import default_positions, extraction_memory
from refusal_core.activations.preload import estimate_before_load, weight_bytes_on_disk
from refusal_core.cli import main
from tests.tiny import tiny_model, tiny_tokenizer

PROMPTS = ["Write a short poem about the sea.", "How do I bake bread?", "What is the capital of France?"]


def _saved(folder, shard: str | None = None, dtype=torch.float32):
    loaded = tiny_model("llama")
    loaded.model.to(dtype).save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    tiny_tokenizer().save_pretrained(folder)
    return loaded


def _library_bytes(folder, itemsize: int | None = None) -> int:
    """Bytes of every tensor in the folder's safetensors files, as the safetensors library reads them."""
    total = 0
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                tensor = handle.get_slice(name)
                count = 1
                for extent in tensor.get_shape():
                    count *= extent
                size = itemsize or torch.empty((), dtype=handle.get_tensor(name).dtype).element_size()
                total += count * size
    return total


@pytest.mark.parametrize("shard", [None, "60KB"])
def test_weights_before_load_are_the_tensor_bytes_of_the_files(tmp_path, shard):
    _saved(tmp_path, shard)
    if shard:
        assert len(list(tmp_path.glob("*.safetensors"))) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    assert weight_bytes_on_disk(tmp_path, torch.float32) == (_library_bytes(tmp_path), 4)
    # Stored in bfloat16, loaded in float32: every element takes 4 bytes once loaded.
    half = tmp_path / "bf16"
    _saved(half, dtype=torch.bfloat16)
    assert weight_bytes_on_disk(half, "auto") == (_library_bytes(half), 2)
    assert weight_bytes_on_disk(half, torch.float32) == (_library_bytes(half, itemsize=4), 4)


@pytest.mark.parametrize("layers", [None, (1, 3)])
def test_estimate_before_load_equals_the_one_after_but_for_the_buffers(tmp_path, layers):
    loaded = _saved(tmp_path)
    before = estimate_before_load(str(tmp_path), torch.float32, PROMPTS, batch_size=2, layers=layers)
    after = extraction_memory(loaded, PROMPTS, batch_size=2, layers=layers)
    buffers = sum(b.numel() * b.element_size() for b in loaded.model.buffers())
    assert before.activations == after.activations and before.forward == after.forward
    assert before.weights == after.weights - buffers
    positions = len(default_positions(tiny_tokenizer()))
    recorded = 4 if layers is None else 2  # 3 blocks: layer numbers 0..3
    assert before.activations == len(PROMPTS) * positions * recorded * 64 * 4


def test_cli_refuses_an_exceeded_budget_before_loading_the_model(tmp_path, monkeypatch, capsys):
    _saved(tmp_path)

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(loading, "load_model", no_load)
    code = main(["activations", "--model", str(tmp_path), "--limit", "3", "--max-memory", "100KB"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "(before loading)" in err and "more than --max-memory" in err and "--layers" in err
    for part in ("weights", "activations", "forward pass", "peak about"):
        assert part in err
    code = main(
        [
            "directions",
            "dim",
            "--model",
            str(tmp_path),
            "--limit",
            "3",
            "--max-memory",
            "100KB",
            "--out",
            str(tmp_path / "d"),
        ]
    )
    assert code == 2 and "more than --max-memory" in capsys.readouterr().err


def test_cli_prints_the_estimate_before_loading_and_runs_within_budget(tmp_path, capsys):
    _saved(tmp_path)
    assert (
        main(["activations", "--model", str(tmp_path), "--limit", "2", "--layers", "1,3", "--max-memory", "1GB"]) == 0
    )
    captured = capsys.readouterr()
    assert captured.err.count("(before loading)") == 2 and "layers 1,3" in captured.out
