"""Identities of a model's weights: a cheap fingerprint for cache keys, and an exact
sha256 that says whether two builds are identical."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

__all__ = ["weights_fingerprint", "weights_sha256"]


_FINGERPRINTS: dict[tuple, str] = {}


def weights_fingerprint(model: nn.Module) -> str:
    """An identity of the model's current weights, cheap to recompute.

    Hashing every byte of a large model is slow, so each tensor contributes its name,
    shape, dtype, exact float64 sum and a strided sample of values. The result is memoised
    on the tensors' storage pointers and in-place version counters, so an edited weight
    (which bumps ``_version``) gets a new fingerprint.
    """
    state = tuple((name, p.data_ptr(), p._version) for name, p in model.state_dict(keep_vars=True).items())
    cached = _FINGERPRINTS.get(state)
    if cached is not None:
        return cached
    digest = hashlib.sha256(model.config.to_json_string().encode() if hasattr(model, "config") else b"")
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            flat = tensor.detach().reshape(-1)
            stride = max(1, flat.numel() // 4096)
            sample = flat[::stride].float().cpu().numpy().tobytes()
            digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|{flat.double().sum().item()!r}".encode())
            digest.update(sample)
    fingerprint = digest.hexdigest()[:32]
    _FINGERPRINTS[state] = fingerprint
    return fingerprint


def weights_sha256(model: torch.nn.Module) -> str:
    """sha256 over every tensor's name and bytes: two builds are identical iff this matches."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()
