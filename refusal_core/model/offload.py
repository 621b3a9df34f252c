"""Models whose weights are not all plain tensors in memory: offloaded by accelerate
(``device_map`` with a CPU or disk budget) or quantized (bitsandbytes 4-/8-bit).

Offloaded parameters sit on the ``meta`` device; accelerate's hook on their module holds the
real values (``weights_map``) and the device the module computes on (``execution_device``).
Reading through it lets the fingerprint see the real weights and puts inputs on the device
the first module runs on.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["execution_device", "is_offloaded_or_quantized", "stored_tensor"]


def _hook(module: nn.Module):
    return getattr(module, "_hf_hook", None)


def execution_device(module: nn.Module, fallback: torch.device) -> torch.device:
    """The device ``module`` computes on: accelerate's execution device, else ``fallback``."""
    device = getattr(_hook(module), "execution_device", None)
    if device is None:
        return fallback
    return torch.device(f"cuda:{device}" if isinstance(device, int) else device)


def stored_tensor(model: nn.Module, name: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` itself, or for an offloaded (meta) parameter the values accelerate keeps for it."""
    if tensor.device.type != "meta":
        return tensor
    module_name, _, local = name.rpartition(".")
    weights = getattr(_hook(model.get_submodule(module_name)), "weights_map", None)
    if weights is None or local not in weights:
        raise ValueError(f"{name} is offloaded and its values cannot be found in accelerate's weights map.")
    return weights[local]


def is_offloaded_or_quantized(model: nn.Module) -> bool:
    """True when some weight is offloaded (meta) or the model was loaded quantized."""
    if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None:
        return True
    return any(param.device.type == "meta" for param in model.parameters())
