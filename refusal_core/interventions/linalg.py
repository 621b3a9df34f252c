"""The linear algebra of ablation: orthonormal bases of a span and projections out of it."""

from __future__ import annotations

import torch

from refusal_core.directions.base import validate_vectors
from refusal_core.errors import SettingsError
from refusal_core.interventions.spec import ABLATION_MODES, AblationMode

__all__ = [
    "compute_dtype",
    "norm_weighted_basis",
    "orthogonal_stages",
    "orthonormal_basis",
    "project_out",
    "restore_norm",
]

# A QR diagonal this small against the largest one means the direction adds nothing new.
_RANK_TOLERANCE = 1e-6


def orthonormal_basis(directions: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis ``[d, r]`` (float64) of the span of ``directions`` ``[k, d]``.

    QR of the directions as columns, in float64; columns whose ``|R_ii|`` is below
    ``1e-6 * max |R_jj|`` are dropped, so dependent directions do not add noise columns
    and several directions are removed exactly, not one after another.
    """
    validate_vectors(directions)
    columns = directions.detach().to(torch.float64).T
    q, r = torch.linalg.qr(columns, mode="reduced")
    diagonal = r.diagonal().abs()
    keep = diagonal >= _RANK_TOLERANCE * diagonal.max()
    return q[:, keep].contiguous()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (bf16/fp16 lose too much)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``x - (x @ Q) Q^T`` for ``x`` ``[..., d]`` and an orthonormal ``Q`` ``[d, r]``.

    Computed in float32 (float64 for float64 input) and cast back to ``x.dtype``. Returns a
    new tensor; ``x`` is never modified.
    """
    compute = compute_dtype(x.dtype)
    q = basis.to(device=x.device, dtype=compute)
    xc = x.to(compute)
    return (xc - (xc @ q) @ q.T).to(x.dtype)


def orthogonal_stages(directions: torch.Tensor, mode: AblationMode = "orthogonal") -> list[torch.Tensor]:
    """The projections that ablate ``directions`` ``[k, d]``, as orthonormal bases ``[d, r]``.

    ``orthogonal``: one stage, the QR basis of the span (all directions removed exactly).
    ``sequential`` (Piras et al.): one stage per unit direction, applied in order without
    orthogonalizing, so only the last direction is guaranteed to be absent afterwards.
    ``norm-preserving``: the ``orthogonal`` stage (the caller restores norms, ``restore_norm``).
    """
    if mode in ("orthogonal", "norm-preserving"):
        return [orthonormal_basis(directions)]
    if mode == "sequential":
        validate_vectors(directions)
        units = directions.detach().to(torch.float64)
        units = units / units.norm(dim=-1, keepdim=True)
        return [unit[:, None] for unit in units]
    raise SettingsError(f"Unknown ablation mode {mode!r}; use one of {', '.join(ABLATION_MODES)}.")


# A projected vector shorter than this (relative to its original length) lay (almost) in the
# removed span; it is left as projected, since no rescaling gives it a meaningful direction.
_NORM_FLOOR = 1e-6


def restore_norm(projected: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``projected`` rescaled along its last axis to ``original``'s norm (in place-safe: a new tensor).

    Both ``[..., d]`` in the same dtype. Each vector ``p`` becomes ``p * |o| / |p|``; one whose
    ``|p|`` is below ``1e-6 |o|`` stays as it is. The rescaled vector keeps ``p``'s direction,
    so it is still orthogonal to the removed span.
    """
    new_norm = projected.norm(dim=-1, keepdim=True)
    old_norm = original.norm(dim=-1, keepdim=True)
    ok = new_norm > _NORM_FLOOR * old_norm
    scale = torch.where(ok, old_norm / torch.where(ok, new_norm, torch.ones_like(new_norm)), torch.ones_like(new_norm))
    return projected * scale


def norm_weighted_basis(directions: torch.Tensor, norm_weight: torch.Tensor, offset: float = 0.0) -> torch.Tensor:
    """The basis a write must be orthogonal to when an elementwise norm follows it.

    A norm ``y = (offset + w) * x / rms(x)`` (Gemma: offset 1; OLMo 2, GLM-4: offset 0)
    gives ``y . d = x . (d * (offset + w)) / rms(x)``: ``y`` is orthogonal to ``d`` exactly
    when ``x`` is orthogonal to ``d * (offset + w)``. So the write is projected out of the
    span of ``{d_i * (offset + w)}``, an orthonormal ``[d, r]`` float64 basis (as
    :func:`orthonormal_basis`). Pure; the in-memory and streaming edits both use it.
    """
    scale = norm_weight.detach().to(torch.float64).cpu() + float(offset)
    return orthonormal_basis(directions.detach().to(torch.float64).cpu() * scale)
