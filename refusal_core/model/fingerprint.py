"""Identities of a model's weights: a cheap fingerprint for cache keys, computed in bounded
memory and under the model lock, and an exact sha256 that says whether two builds are identical.

Hashing every byte of a large model is slow, so each tensor contributes its name, shape,
dtype, its float64 sum and a strided sample of about 4096 values. The sum is accumulated
block by block (at most ``BLOCK_ELEMENTS`` values converted to float64 at a time), so the
extra memory is a few tens of megabytes whatever the model's size, where a whole-tensor
float64 copy of a 128k x 4096 embedding would take 4 GB.

The result is memoised per model object (a weak reference: the entry dies with the model,
so a model loaded later at the same memory addresses never inherits it) and, within one
model, on the tensors' storage pointers and in-place version counters, so an edited weight
(which bumps ``_version``) gets a new fingerprint. Each model keeps its ``MEMO_SIZE`` most
recent entries.
"""

from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict

import torch
from torch import nn

from refusal_core.model.families import model_lock
from refusal_core.model.offload import stored_tensor

__all__ = ["BLOCK_ELEMENTS", "MEMO_SIZE", "clear_memo", "weights_fingerprint", "weights_sha256"]

# 4M values: 32 MB of float64 per block, under 1% of a 1B-parameter float32 model.
BLOCK_ELEMENTS = 1 << 22
SAMPLE_SIZE = 4096
MEMO_SIZE = 16

# model -> (weights state -> fingerprint); weak keys: a freed model's entries go with it.
_MEMO: weakref.WeakKeyDictionary[nn.Module, OrderedDict[tuple, str]] = weakref.WeakKeyDictionary()
_MEMO_GUARD = threading.Lock()


def clear_memo() -> None:
    """Forget every memoised fingerprint (benchmarks time the first call with this)."""
    with _MEMO_GUARD:
        _MEMO.clear()


def _blocks(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Views of ``tensor`` along dim 0 holding at most about BLOCK_ELEMENTS values each."""
    if tensor.dim() == 0 or tensor.numel() <= BLOCK_ELEMENTS:
        return [tensor]
    row = max(1, tensor[0].numel())
    return list(tensor.split(max(1, BLOCK_ELEMENTS // row), dim=0))


def _tensor_summary(tensor: torch.Tensor) -> tuple[float, bytes]:
    """(float64 sum, bytes of every ``stride``-th value as float32), streamed block by block.

    The sample takes the same values as ``tensor.reshape(-1)[::stride]`` would, without
    flattening a non-contiguous tensor as a whole.
    """
    numel = tensor.numel()
    stride = max(1, numel // SAMPLE_SIZE)
    total = 0.0
    samples = []
    offset = 0
    for block in _blocks(tensor.detach()):
        flat = block.reshape(-1)  # a view for contiguous blocks; a copy of one block at most
        total += float(flat.double().sum().item())
        first = (-offset) % stride
        samples.append(flat[first::stride].float().cpu())
        offset += flat.numel()
    sample = torch.cat(samples) if samples else torch.empty(0)
    return total, sample.numpy().tobytes()


def _memo_key(model: nn.Module) -> tuple:
    return tuple((name, p.data_ptr(), p._version) for name, p in model.state_dict(keep_vars=True).items())


def weights_fingerprint(model: nn.Module) -> str:
    """32 hex characters that change when any weight of ``model`` changes.

    Runs under ``model_lock(model)``: another session's weight edit (which holds the lock
    while the weights are edited) is never half-seen, and a caller that holds the lock
    across the fingerprint and its own forward pass files results under the right key.
    """
    with model_lock(model):
        key = _memo_key(model)
        with _MEMO_GUARD:
            memo = _MEMO.setdefault(model, OrderedDict())
            cached = memo.get(key)
            if cached is not None:
                memo.move_to_end(key)
                return cached
        config = model.config.to_json_string().encode() if hasattr(model, "config") else b""
        digest = hashlib.sha256(config)
        with torch.no_grad():
            for name, tensor in model.state_dict().items():
                tensor = stored_tensor(model, name, tensor)  # an offloaded weight's real values
                total, sample = _tensor_summary(tensor)
                digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{total!r}".encode())
                digest.update(sample)
        fingerprint = digest.hexdigest()[:32]
        with _MEMO_GUARD:  # still under the model lock: no edit can slip in between hash and memo
            memo = _MEMO.setdefault(model, OrderedDict())
            memo[key] = fingerprint
            while len(memo) > MEMO_SIZE:
                memo.popitem(last=False)
    return fingerprint


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every tensor's name and bytes: two builds are identical iff this matches.

    Taken under ``model_lock(model)``, so another session's weight edit (which holds the
    lock while the weights are changed) is never hashed half-done.
    """
    digest = hashlib.sha256()
    with model_lock(model):
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
