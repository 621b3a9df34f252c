"""The weights fingerprint: streamed in blocks, the same as the whole-tensor formula where
tensors fit one block, changed by any edit, and a memo that stays bounded."""

from __future__ import annotations

import hashlib

import torch

from refusal_core.model import fingerprint
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
    for seed in range(fingerprint.MEMO_SIZE + 3):
        weights_fingerprint(tiny_model("gpt2", seed=seed).model)
    assert len(fingerprint._MEMO) == fingerprint.MEMO_SIZE
