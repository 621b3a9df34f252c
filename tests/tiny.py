"""Tiny seeded random models (built by the engine, refusal_core.model.tiny) and the hook
check that the fast tests share."""

from __future__ import annotations

import torch

from refusal_core.model.tiny import FAMILY_CONFIGS, tiny_model, tiny_tokenizer

__all__ = ["FAMILY_CONFIGS", "assert_no_hooks", "tiny_model", "tiny_tokenizer"]


def _ours(hooks: dict) -> list:
    # transformers 5 installs its own persistent output-capturing hooks the first time a
    # forward asks for hidden states; those are not ours to remove.
    return [hook for hook in hooks.values() if not getattr(hook, "__module__", "").startswith("transformers")]


def assert_no_hooks(model: torch.nn.Module) -> None:
    """Fail if any module of ``model`` still carries a forward or pre-forward hook of ours."""
    for name, module in model.named_modules():
        assert not _ours(module._forward_hooks), f"forward hook left on {name}"
        assert not _ours(module._forward_pre_hooks), f"pre-hook left on {name}"
