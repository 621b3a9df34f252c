"""The residual self-check: after an edit meant to remove directions from the residual
stream, run a short probe and measure what is left along them.

``residual_leak`` reads the residual stream after the embedding (the input of block 0)
and after every block and returns, per point, the worst ``|P h| / |h|`` over the probe's
tokens, where ``P`` projects onto the span of the directions. ``check_residual`` raises a
``ResidualLeakError`` naming the first layer that leaks and the module whose output carries
the leak, so a family whose writer list misses a module can never be ablated partially
without anyone noticing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from refusal_core.errors import UserError
from refusal_core.model.families import model_lock, model_parts
from refusal_core.model.forward import block_hooks

__all__ = ["ResidualLeakError", "ProbeResult", "check_residual", "probe_ids", "residual_leak", "tolerance"]

# Worst relative residual component allowed after an exact edit, by the model's dtype.
_TOLERANCE = {torch.float64: 1e-6, torch.float32: 1e-4}
_HALF_TOLERANCE = 5e-2


class ResidualLeakError(UserError):
    """Edited weights still write along a removed direction; the message names where."""


@dataclass(frozen=True)
class ProbeResult:
    """``leaks[0]`` is after the embedding, ``leaks[i + 1]`` after block ``i``."""

    leaks: tuple[float, ...]
    tolerance: float

    @property
    def worst(self) -> float:
        return max(self.leaks)

    @property
    def first_bad(self) -> int | None:
        return next((i for i, leak in enumerate(self.leaks) if leak > self.tolerance), None)


def tolerance(dtype: torch.dtype) -> float:
    return _TOLERANCE.get(dtype, _HALF_TOLERANCE)


def probe_ids(model: nn.Module, n_prompts: int = 2, n_tokens: int = 8) -> torch.Tensor:
    """Deterministic token ids ``[n_prompts, n_tokens]`` drawn from the model's vocabulary."""
    vocab = int(model.get_input_embeddings().weight.shape[0])
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n_prompts, n_tokens), generator=generator)


def _basis(directions: torch.Tensor) -> torch.Tensor:
    q, _ = torch.linalg.qr(directions.detach().to(torch.float64).T, mode="reduced")
    return q


def _leak(hidden: torch.Tensor, basis: torch.Tensor) -> float:
    h = hidden.detach().to(torch.float64).reshape(-1, hidden.shape[-1])
    along = (h @ basis.to(h.device)).norm(dim=-1)
    return float((along / h.norm(dim=-1).clamp_min(1e-30)).max())


def _output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _run(model: nn.Module, ids: torch.Tensor) -> None:
    device = model.get_input_embeddings().weight.device
    with torch.no_grad():
        model(input_ids=ids.to(device), use_cache=False)


def residual_leak(model: nn.Module, directions: torch.Tensor, ids: torch.Tensor | None = None) -> ProbeResult:
    """What is left along ``directions`` ``[k, d]`` after the embedding and every block."""
    parts = model_parts(model)
    basis = _basis(directions)
    ids = probe_ids(model) if ids is None else ids
    leaks: list[float] = [0.0] * (parts.n_layers + 1)

    def read_input(hidden: torch.Tensor) -> None:
        leaks[0] = _leak(hidden, basis)

    def read_output(layer: int):
        def hook(module, args, output) -> None:
            leaks[layer + 1] = _leak(_output(output), basis)

        return hook

    outputs = [(block, read_output(layer)) for layer, block in enumerate(parts.layers)]
    with block_hooks(model, {0: read_input}, outputs):
        _run(model, ids)
    dtype = model.get_input_embeddings().weight.dtype
    return ProbeResult(tuple(leaks), tolerance(dtype))


def _leaking_module(model: nn.Module, point: int, basis: torch.Tensor, ids: torch.Tensor) -> tuple[str, float]:
    """The module writing at residual ``point`` whose output has the largest component."""
    parts = model_parts(model)
    names = {id(module): name for name, module in model.named_modules(remove_duplicate=False)}
    if point == 0:
        candidates = list(parts.embeddings)
    else:
        candidates = [parts.attn_writes[point - 1], parts.mlp_writes[point - 1]]
    found: dict[int, float] = {}

    def hook(module, args, output) -> None:
        found[id(module)] = max(found.get(id(module), 0.0), _leak(_output(output), basis))

    with block_hooks(model, {}, [(module, hook) for module in candidates]):
        _run(model, ids)
    worst = max(candidates, key=lambda module: found.get(id(module), 0.0))
    return names.get(id(worst), type(worst).__name__), found.get(id(worst), 0.0)


def check_residual(model: nn.Module, directions: torch.Tensor, what: str = "editing the weights") -> ProbeResult:
    """Run the probe; raise ``ResidualLeakError`` naming the layer and module that leak."""
    with model_lock(model):
        ids = probe_ids(model)
        result = residual_leak(model, directions, ids)
        bad = result.first_bad
        if bad is None:
            return result
        module, module_leak = _leaking_module(model, bad, _basis(directions), ids)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    where = "after the embedding" if bad == 0 else f"after block {bad - 1}"
    if module_leak <= result.tolerance:
        module = f"a module the family layout does not list (its listed writers are clean; the worst, {module},"
        module += f" has {module_leak:.2e})"
        module_leak_text = ""
    else:
        module_leak_text = f" (output component {module_leak:.2e})"
    raise ResidualLeakError(
        f"After {what}, the residual stream {where} still has {result.leaks[bad]:.2e} of its norm along the "
        f"removed directions (tolerance {result.tolerance:.0e}); the leak comes from {module}"
        f"{module_leak_text}. The family layout for model_type={model_type!r} misses or "
        "mislabels a module that writes into the residual stream there: register the right writers with "
        "refusal_core.model.families.register_family(), or use the ablate() hooks instead."
    )
