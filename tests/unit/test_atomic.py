"""Folders that appear whole (refusal_core/atomic.py) and the organism save that uses them:
two sessions of one process saving at once, and a reader that must never find no model."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file

from refusal_core import atomic
from refusal_core.organism import delta as delta_module
from tests.tiny import tiny_model


def _write(folder: Path, label: str) -> None:
    (folder / "a.txt").write_text(label)
    (folder / "b.txt").write_text(label)


def test_a_new_target_appears_whole_and_a_finished_one_is_kept(tmp_path):
    target = tmp_path / "model"
    first = atomic.new_temp_dir(target)
    second = atomic.new_temp_dir(target)
    assert first != second  # unique per call, not per process
    _write(first, "first"), _write(second, "second")
    atomic.place_dir(first, target, replace=False)
    atomic.place_dir(second, target, replace=False)  # another writer finished first: kept
    assert (target / "a.txt").read_text() == "first" and not second.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_replacing_swaps_the_contents_with_or_without_the_exchange(tmp_path, monkeypatch):
    target = tmp_path / "model"
    target.mkdir()
    _write(target, "old")
    new = atomic.new_temp_dir(target)
    _write(new, "new")
    atomic.place_dir(new, target, replace=True)
    assert [(target / n).read_text() for n in ("a.txt", "b.txt")] == ["new", "new"]
    monkeypatch.setattr(atomic, "exchange_dirs", lambda first, second: False)  # a system without renameat2
    newer = atomic.new_temp_dir(target)
    _write(newer, "newer")
    atomic.place_dir(newer, target, replace=True)
    assert [(target / n).read_text() for n in ("a.txt", "b.txt")] == ["newer", "newer"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_two_sessions_saving_the_organism_at_once_never_leave_the_reader_without_a_model(tmp_path, monkeypatch):
    """Two threads (two dashboard sessions: one process id) save different models to one
    folder three times each while a reader keeps looking: it must find a model every time,
    and the folder ends holding one whole model (its weights one writer's, not a mixture)."""
    monkeypatch.setattr(delta_module, "_model_card", lambda delta, applied_from: "card\n")
    target = tmp_path / "refusal-organism"
    models = [tiny_model("llama", seed=seed) for seed in (31, 32)]
    stub = SimpleNamespace(sha256="s", base_sha256="b", info={})
    delta_module.save_organism(models[0], stub, "first", target)
    errors: list[BaseException] = []
    missing = []
    done = threading.Event()

    def writer(loaded) -> None:
        try:
            for _ in range(3):
                delta_module.save_organism(loaded, stub, "test", target)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    def reader() -> None:
        while not done.is_set():
            if not (target / "config.json").is_file() or not (target / "model.safetensors").is_file():
                missing.append(1)

    threads = [threading.Thread(target=writer, args=(m,)) for m in models]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    done.set()
    watcher.join(10)
    assert errors == [] and missing == []
    saved = load_file(str(target / "model.safetensors"))
    matches = [
        all(torch.equal(saved[name], tensor) for name, tensor in m.model.state_dict().items() if name in saved)
        for m in models
    ]
    assert sum(matches) == 1, matches
    assert sorted(p.name for p in tmp_path.iterdir()) == ["refusal-organism"]  # no temporary folder left behind
