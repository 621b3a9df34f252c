"""manifest.json and ``reproduce``: what an export records (checked against independent
computations: the weights' sha256, the files' own hashes), a rerun that matches, and a
tampered output or manifest that does not (exit 1) or cannot be read (exit 2)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from refusal_core.cli import main
from refusal_core.directions.base import DirectionSet
from refusal_core.model.fingerprint import weights_sha256
from tests.tiny import tiny_model


@pytest.fixture()
def directions_file(tmp_path):
    generator = torch.Generator().manual_seed(2)
    DirectionSet(
        vectors=torch.randn(2, 64, generator=generator), names=("a", "b"), provenance=({"layer": 2}, {"layer": 2})
    ).save(tmp_path / "dirs")
    return tmp_path / "dirs"


def _hash_by_hand(folder) -> str:
    """Independent of the manifest code: sha256 of 'path NUL sha256' lines; safetensors headers canonicalised."""
    lines = []
    for path in sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name not in ("manifest.json", ".refusal-atlas-export", "README.md")
    ):
        data = path.read_bytes()
        if path.suffix == ".safetensors":
            size = int.from_bytes(data[:8], "little")
            data = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True).encode() + data[8 + size :]
        lines.append(f"{path.relative_to(folder).as_posix()}\0{hashlib.sha256(data).hexdigest()}\n")
    return hashlib.sha256("".join(sorted(lines)).encode()).hexdigest()


@pytest.mark.parametrize("fmt", ["lora", "control-vector"])
def test_export_manifest_and_reproduce(tmp_path, one_thread, directions_file, capsys, fmt):
    out = tmp_path / "export"
    argv = [
        "export-model",
        "--model",
        "tiny:llama",
        "--ablate",
        str(directions_file),
        "--format",
        fmt,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["weights_sha256"] == weights_sha256(tiny_model("llama").model)
    assert manifest["directions"]["names"] == ["a", "b"]
    assert manifest["invoked"].endswith(" ".join(argv))
    assert manifest["output"]["sha256"] == _hash_by_hand(out)
    assert {"torch", "transformers", "peft", "gguf"} <= set(manifest["versions"])
    capsys.readouterr()
    assert main(["reproduce", str(out / "manifest.json")]) == 0
    assert "MATCH" in capsys.readouterr().out
    # Tamper with the output: the recorded hash no longer matches what the rerun writes.
    manifest["output"]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(["reproduce", str(out / "manifest.json")]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_changed_directions_file_is_a_mismatch(tmp_path, one_thread, directions_file):
    out = tmp_path / "export"
    assert (
        main(
            [
                "export-model",
                "--model",
                "tiny:llama",
                "--ablate",
                str(directions_file),
                "--format",
                "lora",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    # The rerun reads the directions saved inside the export; change them.
    generator = torch.Generator().manual_seed(9)
    DirectionSet(vectors=torch.randn(2, 64, generator=generator), names=("a", "b"), provenance=({}, {})).save(
        out / "directions"
    )
    assert main(["reproduce", str(out / "manifest.json")]) == 1


def test_bad_manifests_exit_2(tmp_path, capsys):
    assert main(["reproduce", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["reproduce", str(tmp_path / "bad.json")]) == 2
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something-else"}))
    assert main(["reproduce", str(tmp_path / "other.json")]) == 2
    assert "manifest" in capsys.readouterr().err


def test_saved_directions_get_a_manifest_that_reproduces(tmp_path, one_thread, capsys):
    stem = tmp_path / "dim"
    argv = ["directions", "dim", "--model", "tiny:llama", "--limit", "4", "--out", str(stem)]
    assert main(argv) == 0
    manifest = json.loads((tmp_path / "dim.manifest.json").read_text())
    assert {item["path"] for item in manifest["output"]["files"]} == {"dim.safetensors", "dim.json"}
    assert manifest["rerun"] == argv
    assert main(["reproduce", str(tmp_path / "dim.manifest.json")]) == 0


def test_a_moved_export_still_reproduces(tmp_path, one_thread, directions_file):
    out = tmp_path / "export"
    assert (
        main(
            [
                "export-model",
                "--model",
                "tiny:llama",
                "--ablate",
                str(directions_file),
                "--format",
                "lora",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    moved = tmp_path / "elsewhere"
    out.rename(moved)
    assert main(["reproduce", str(moved / "manifest.json")]) == 0
