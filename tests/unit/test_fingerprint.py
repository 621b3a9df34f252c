"""The weights fingerprint: streamed in blocks, the same as the whole-tensor formula where
tensors fit one block, changed by any edit, and a memo that stays bounded."""

from __future__ import annotations

import gc
import hashlib
import threading
import time

import torch

from refusal_core.model import fingerprint
from refusal_core.model.families import model_lock
from refusal_core.model.fingerprint import weights_fingerprint
from tests.tiny import tiny_model


def whole_tensor_fingerprint(model) -> str:
    """The formula before streaming: a float64 copy of each whole tensor (also timed by benchmarks/bench_fingerprint.py)."""
    digest = hashlib.sha256(model.config.to_json_string().encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1)
        stride = max(1, flat.numel() // 4096)
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{flat.double().sum().item()!r}".encode())
        digest.update(flat[::stride].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:32]


def test_small_tensors_keep_the_previous_value():
    loaded = tiny_model("llama", seed=11)
    assert weights_fingerprint(loaded.model) == whole_tensor_fingerprint(loaded.model)


def test_blocks_bound_the_float64_copy_and_sample_the_same_values(monkeypatch):
    monkeypatch.setattr(fingerprint, "BLOCK_ELEMENTS", 1000)
    tensor = torch.randn(300, 70).t()  # non-contiguous, 21000 values
    blocks = fingerprint._blocks(tensor)
    assert len(blocks) > 10 and max(block.numel() for block in blocks) <= 1000
    total, sample = fingerprint._tensor_summary(tensor)
    flat = tensor.reshape(-1)
    assert sample == flat[:: max(1, flat.numel() // 4096)].float().numpy().tobytes()
    assert abs(total - flat.double().sum().item()) < 1e-9


def test_an_edit_changes_it_and_the_memo_stays_bounded():
    fingerprint.clear_memo()
    loaded = tiny_model("llama", seed=12)
    before = weights_fingerprint(loaded.model)
    with torch.no_grad():
        loaded.model.lm_head.weight[3, 5] += 1e-3
    assert weights_fingerprint(loaded.model) != before
    for _ in range(fingerprint.MEMO_SIZE + 3):
        with torch.no_grad():
            loaded.model.lm_head.weight[3, 5] += 1e-3
        weights_fingerprint(loaded.model)
    assert len(fingerprint._MEMO[loaded.model]) == fingerprint.MEMO_SIZE
    for seed in range(5):
        weights_fingerprint(tiny_model("gpt2", seed=seed).model)
    gc.collect()
    assert list(fingerprint._MEMO.keys()) == [loaded.model]  # freed models took their entries with them


def test_a_new_model_at_reused_addresses_gets_its_own_fingerprint(monkeypatch):
    """The organism and the base model have the same names and shapes; a model loaded where a
    freed one lived can have the same data pointers and version counters. Simulated by giving
    every model the same pointer/version key: the fingerprints must still be each model's own."""
    fingerprint.clear_memo()
    monkeypatch.setattr(fingerprint, "_memo_key", lambda model: ("same addresses",))
    first, second = tiny_model("llama", seed=21).model, tiny_model("llama", seed=22).model
    a, b = weights_fingerprint(first), weights_fingerprint(second)
    fingerprint.clear_memo()
    assert a != b and b == whole_tensor_fingerprint(second) and a == whole_tensor_fingerprint(first)


def test_sha256_waits_for_a_weight_edit_in_progress():
    """weights_sha256 takes the model lock: a hash started while another session edits the
    weights (holding the lock) waits for the edit to be undone, and hashes the original weights."""
    model = tiny_model("llama", seed=23).model
    original = fingerprint.weights_sha256(model)
    result: list[str] = []
    edited = threading.Event()

    def edit_then_restore() -> None:
        with model_lock(model):
            with torch.no_grad():
                model.lm_head.weight.mul_(2.0)
            edited.set()
            time.sleep(0.5)
            with torch.no_grad():
                model.lm_head.weight.div_(2.0)

    editor = threading.Thread(target=edit_then_restore)
    editor.start()
    edited.wait(5)
    hasher = threading.Thread(target=lambda: result.append(fingerprint.weights_sha256(model)))
    hasher.start()
    editor.join(), hasher.join(10)
    assert result == [original]
