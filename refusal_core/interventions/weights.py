"""Weight orthogonalization: the ablation projection applied to the weights that write into
the residual stream, reversibly (``orthogonalized_weights``) or for good (for export).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from refusal_core.directions.base import DirectionError, DirectionSet, validate_vectors
from refusal_core.errors import SettingsError
from refusal_core.interventions.linalg import (
    compute_dtype,
    norm_weighted_basis,
    orthonormal_basis,
    project_out,
    restore_norm,
)
from refusal_core.interventions.spec import ABLATION_MODES, AblationMode, as_direction_matrix
from refusal_core.model.families import ModelParts, model_lock, model_parts, model_width
from refusal_core.model.probe import check_residual
from refusal_core.model.writers import ResidualWrite, WriterError, residual_writes

__all__ = ["orthogonalize_weights_", "orthogonalized_weights"]


def _orthogonalized(
    weight: torch.Tensor, basis: torch.Tensor, axis: int, mode: AblationMode = "orthogonal"
) -> torch.Tensor:
    """``weight`` with the basis projected out of its residual-stream axis, same dtype.

    ``norm-preserving``: each vector along the residual axis (a column of an ``nn.Linear``
    weight, a row of an embedding, a bias) is then rescaled to its original norm.
    """
    vectors = weight.movedim(axis, -1)
    if mode != "norm-preserving":
        return project_out(vectors, basis).movedim(-1, axis)
    original = vectors.to(compute_dtype(weight.dtype))
    projected = project_out(original, basis)
    return restore_norm(projected, original).to(weight.dtype).movedim(-1, axis)


def _weight_edits(model: nn.Module) -> list[tuple[torch.Tensor, ResidualWrite]]:
    """(parameter, write) for every weight and bias that writes to the residual stream.

    Read from the one writer list (``model/writers.py``) and checked before anything is
    edited, so an unsupported module or a quantized weight fails with the model untouched.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    try:
        writes = residual_writes(model)
    except WriterError as err:
        raise ValueError(str(err)) from err
    edits = []
    for write in writes:
        param = params[write.name]
        if not param.is_floating_point() or param.device.type == "meta":
            raise SettingsError(
                f"Cannot edit the {param.dtype} parameter {write.name} on {param.device} in memory: the model was "
                "loaded quantized or offloaded. Use the ablate() hooks to study it, and to export it use "
                "export-model (or the Export page) on its folder or hub id: the streaming export reads the "
                "original safetensors files shard by shard and never needs the model in memory."
            )
        edits.append((param, write))
    return edits


def _write_basis(
    write: ResidualWrite, matrix: torch.Tensor, basis: torch.Tensor, params: dict, cache: dict
) -> torch.Tensor:
    """The plain basis, or for a write behind an elementwise norm the norm-weighted one."""
    if write.norm is None:
        return basis
    key = (write.norm, write.norm_offset)
    if key not in cache:
        cache[key] = norm_weighted_basis(matrix, params[write.norm], write.norm_offset)
    return cache[key]


def _check_directions(model: nn.Module, directions: torch.Tensor | DirectionSet) -> torch.Tensor:
    """The ``[k, d]`` direction matrix, after checking its width against the model."""
    d_model = model_width(model)
    if isinstance(directions, DirectionSet):
        directions.check_width(d_model)
    matrix = as_direction_matrix(directions)
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2 or matrix.shape[1] != d_model:
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise DirectionError(
            f"Directions must be [k, {d_model}] for this model, got {shape}; use directions computed on it."
        )
    validate_vectors(matrix)
    return matrix


def _check_orthogonalizable(model: nn.Module, parts: ModelParts) -> None:
    if not parts.family.weights_orthogonalizable:
        raise SettingsError(
            f"{type(model).__name__} normalises the attention and MLP outputs after their projections, so "
            "editing weights cannot remove a direction exactly. Use the ablate() hooks instead "
            "(orthogonalized weights cannot be made or exported for this family)."
        )


def _tied_embedding(parts: ModelParts) -> nn.Module | None:
    """The embedding whose weight is the very same Parameter as the lm_head's, if any."""
    head_weight = getattr(parts.lm_head, "weight", None)
    return next((emb for emb in parts.embeddings if emb.weight is head_weight), None)


def _orthogonalize_(
    model: nn.Module, directions: torch.Tensor | DirectionSet, backups: list | None, mode: AblationMode = "orthogonal"
) -> torch.Tensor:
    """Edit the residual writers of ``model`` in place; record (param, original) in ``backups``.

    A tied lm_head must keep the original matrix, so it is first given its own Parameter
    holding the original values; that copy doubles as the embedding's backup, which saves
    a second vocabulary-sized clone. Returns the direction matrix, for the self-check.
    """
    if mode not in ("orthogonal", "norm-preserving"):
        raise SettingsError(
            f"Weights can be edited in mode orthogonal or norm-preserving, not {mode!r} "
            f"(modes: {', '.join(ABLATION_MODES)}); use the ablate() hooks for {mode!r}."
        )
    parts = model_parts(model)
    _check_orthogonalizable(model, parts)
    matrix = _check_directions(model, directions)
    basis = orthonormal_basis(matrix)
    edits = _weight_edits(model)
    params = dict(model.named_parameters(remove_duplicate=False))
    norm_bases: dict = {}
    tied = _tied_embedding(parts)
    tied_weight = tied.weight if tied is not None else None
    if tied_weight is not None:
        parts.lm_head.weight = nn.Parameter(tied_weight.detach().clone(), requires_grad=tied_weight.requires_grad)
    for param, write in edits:
        if backups is not None:
            original = parts.lm_head.weight.detach() if param is tied_weight else param.detach().clone()
            backups.append((param, original))
        write_basis = _write_basis(write, matrix, basis, params, norm_bases)
        with torch.no_grad():
            param.copy_(_orthogonalized(param.detach(), write_basis, write.axis, mode))
    return matrix


@contextmanager
def orthogonalized_weights(
    model: nn.Module, directions: torch.Tensor | DirectionSet, mode: AblationMode = "orthogonal"
) -> Iterator[None]:
    """Temporarily project ``directions`` out of the weights that write to the residual stream.

    Edits, in place: every embedding matrix (e.g. GPT-2's ``wte`` and ``wpe``), and each
    layer's attention-out and MLP-out weights and biases. Equivalent to ``ablate()`` at all
    layers. A tied lm_head keeps the original matrix (it is untied for the duration and
    re-tied afterwards). The exact original values are restored on exit, also after an
    exception. Where an elementwise norm follows a projection (Gemma 2/3, OLMo 2, GLM-4),
    the projection is orthogonalized against the norm-weighted directions, which keeps the
    residual stream exactly orthogonal to them. A short probe then checks the residual
    stream after the embedding and every block (``model/probe.py``) and raises
    ``ResidualLeakError``, naming the layer and module, if anything is left along the
    directions; the weights are restored before it propagates.
    ``mode="norm-preserving"`` rescales every edited residual-side vector to its original norm.
    """
    with model_lock(model):
        parts = model_parts(model)
        head_weight = getattr(parts.lm_head, "weight", None)
        backups: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            matrix = _orthogonalize_(model, directions, backups, mode)
            check_residual(model, matrix)
            yield
        finally:
            with torch.no_grad():
                for param, original in reversed(backups):
                    param.copy_(original)
            if head_weight is not None and parts.lm_head.weight is not head_weight:
                parts.lm_head.weight = head_weight


def orthogonalize_weights_(
    model: nn.Module, directions: torch.Tensor | DirectionSet, mode: AblationMode = "orthogonal"
) -> None:
    """Permanently orthogonalize ``model``'s weights against ``directions`` (no way back).

    For a copy of a model that will be saved or served as the ablated model; the app's
    shared model must use ``orthogonalized_weights`` (reversible) instead. A tied lm_head is
    untied for good and ``config.tie_word_embeddings`` set to False, so that saving the
    model keeps the original unembedding. The same probe as ``orthogonalized_weights``
    runs afterwards; on a leak the model is left edited (it is a copy meant for export)
    and ``ResidualLeakError`` says where.
    """
    with model_lock(model):
        matrix = _orthogonalize_(model, directions, backups=None, mode=mode)
        check_residual(model, matrix)
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
