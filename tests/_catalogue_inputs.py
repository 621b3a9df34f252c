"""Bad input files for the error catalogue (tests/unit/test_error_catalogue.py)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from refusal_core.directions.base import DirectionSet
from tests.tiny import tiny_model, tiny_tokenizer


def _set(vectors: torch.Tensor, stem: Path) -> str:
    """Save a set as DirectionSet.save does, bypassing its validation (to save bad ones too)."""
    names = tuple(f"d{i}" for i in range(vectors.shape[0]))
    provenance = tuple({"model": "tiny", "layer": 1, "position": -1, "method": "dim", "params": {}} for _ in names)
    directions = DirectionSet.__new__(DirectionSet)
    for field, value in (("vectors", vectors), ("names", names), ("provenance", provenance), ("meta", {})):
        object.__setattr__(directions, field, value)
    directions.save(stem)
    return str(stem)


def make_inputs(folder: Path) -> dict[str, str]:
    """Write every bad (and a few good) input into ``folder``; returns name -> path."""
    paths: dict[str, str] = {}
    loaded = tiny_model("llama")
    loaded.model.save_pretrained(folder / "model")
    loaded.tokenizer.save_pretrained(folder / "model")
    paths["model"] = str(folder / "model")
    # Not in the family table, and its blocks write through one module, so discovery fails too.
    config = AutoConfig.for_model(
        "mamba",
        vocab_size=len(tiny_tokenizer()),
        hidden_size=32,
        num_hidden_layers=1,
        state_size=4,
        expand=2,
        conv_kernel=2,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(folder / "mamba")
    tiny_tokenizer().save_pretrained(folder / "mamba")
    paths["mamba"] = str(folder / "mamba")
    texts = {
        "empty.txt": b"",
        "blank.txt": b"\n  \n\n",
        "questions.csv": b"question\nWhat is this?\n",
        "truncated.json": b'[{"prompt": "Write a poem"}, {"prompt": "Tell',
        "truncated.jsonl": b'{"prompt": "Write a poem"}\n{"prompt": "Tell',
        "latin1.txt": "Caf\u00e9 au lait\n".encode("latin-1"),
        "numbers.json": b"[1, 2, 3]",
        "prompts.txt": b"Write a poem about the sea.\nHow do I bake bread?\nExplain photosynthesis.\n",
    }
    for name, data in texts.items():
        (folder / name).write_bytes(data)
        paths[name.replace(".", "_")] = str(folder / name)
    generator = torch.Generator().manual_seed(0)
    paths["good"] = _set(torch.randn(2, 64, generator=generator), folder / "good")
    paths["narrow"] = _set(torch.randn(1, 32, generator=generator), folder / "narrow")
    nan = torch.randn(1, 64, generator=generator)
    nan[0, 3] = float("nan")
    paths["nan"] = _set(nan, folder / "nan")
    paths["truncated_set"] = _set(torch.randn(1, 64, generator=generator), folder / "truncated_set")
    tensors = Path(paths["truncated_set"] + ".safetensors")
    tensors.write_bytes(tensors.read_bytes()[:40])
    paths["badjson"] = _set(torch.randn(1, 64, generator=generator), folder / "badjson")
    Path(paths["badjson"] + ".json").write_text('{"names": ["d0"], "provenance": [')
    (folder / "theirs").mkdir()
    (folder / "theirs" / "notes.txt").write_text("someone's notes")
    paths["theirs"] = str(folder / "theirs")
    (folder / "afile").write_text("a file, not a folder")
    paths["afile"] = str(folder / "afile")
    (folder / "one_line.txt").write_text("word " * (1024 * 1024))  # one 5 MB line: one enormous prompt
    paths["one_line"] = str(folder / "one_line.txt")
    own = AutoTokenizer.from_pretrained(folder / "model")  # a copy: the tiny tokenizer is shared
    own.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant:{% endif %}"
    )
    loaded.model.save_pretrained(folder / "nosystem")
    own.save_pretrained(folder / "nosystem")
    paths["nosystem"] = str(folder / "nosystem")
    (folder / "co:lon").mkdir()
    paths["colon"] = _set(torch.randn(2, 64, generator=generator), folder / "co:lon" / "set")
    paths["badprov"] = _set(torch.randn(1, 64, generator=generator), folder / "badprov")
    Path(paths["badprov"] + ".json").write_text('{"names": ["d0"], "provenance": [1], "meta": {}}')
    paths["missing"] = str(folder / "missing.txt")
    paths["tmp"] = str(folder)
    return paths
