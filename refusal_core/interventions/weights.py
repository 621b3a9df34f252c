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
from refusal_core.interventions.linalg import orthonormal_basis, project_out
from refusal_core.interventions.spec import as_direction_matrix
from refusal_core.model.families import ModelParts, model_lock, model_parts, model_width
from refusal_core.model.writers import WriterError, residual_writes

__all__ = ["orthogonalize_weights_", "orthogonalized_weights"]


def _orthogonalized(weight: torch.Tensor, basis: torch.Tensor, axis: int) -> torch.Tensor:
    """``weight`` with the basis projected out of its residual-stream axis, same dtype."""
    return project_out(weight.movedim(axis, -1), basis).movedim(-1, axis)


def _weight_edits(model: nn.Module) -> list[tuple[torch.Tensor, int]]:
    """(parameter, residual axis) for every weight and bias that writes to the residual stream.

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
        edits.append((param, write.axis))
    return edits


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


def _orthogonalize_(model: nn.Module, directions: torch.Tensor | DirectionSet, backups: list | None) -> None:
    """Edit the residual writers of ``model`` in place; record (param, original) in ``backups``.

    A tied lm_head must keep the original matrix, so it is first given its own Parameter
    holding the original values; that copy doubles as the embedding's backup, which saves
    a second vocabulary-sized clone.
    """
    parts = model_parts(model)
    _check_orthogonalizable(model, parts)
    basis = orthonormal_basis(_check_directions(model, directions))
    edits = _weight_edits(model)
    tied = _tied_embedding(parts)
    tied_weight = tied.weight if tied is not None else None
    if tied_weight is not None:
        parts.lm_head.weight = nn.Parameter(tied_weight.detach().clone(), requires_grad=tied_weight.requires_grad)
    for param, axis in edits:
        if backups is not None:
            original = parts.lm_head.weight.detach() if param is tied_weight else param.detach().clone()
            backups.append((param, original))
        with torch.no_grad():
            param.copy_(_orthogonalized(param.detach(), basis, axis))


@contextmanager
def orthogonalized_weights(model: nn.Module, directions: torch.Tensor | DirectionSet) -> Iterator[None]:
    """Temporarily project ``directions`` out of the weights that write to the residual stream.

    Edits, in place: every embedding matrix (e.g. GPT-2's ``wte`` and ``wpe``), and each
    layer's attention-out and MLP-out weights and biases. Equivalent to ``ablate()`` at all
    layers. A tied lm_head keeps the original matrix (it is untied for the duration and
    re-tied afterwards). The exact original values are restored on exit, also after an
    exception. Families that normalise after those projections (Gemma 2/3) raise ValueError.
    """
    with model_lock(model):
        parts = model_parts(model)
        head_weight = getattr(parts.lm_head, "weight", None)
        backups: list[tuple[torch.Tensor, torch.Tensor]] = []
        try:
            _orthogonalize_(model, directions, backups)
            yield
        finally:
            with torch.no_grad():
                for param, original in reversed(backups):
                    param.copy_(original)
            if head_weight is not None and parts.lm_head.weight is not head_weight:
                parts.lm_head.weight = head_weight


def orthogonalize_weights_(model: nn.Module, directions: torch.Tensor | DirectionSet) -> None:
    """Permanently orthogonalize ``model``'s weights against ``directions`` (no way back).

    For a copy of a model that will be saved or served as the ablated model; the app's
    shared model must use ``orthogonalized_weights`` (reversible) instead. A tied lm_head is
    untied for good and ``config.tie_word_embeddings`` set to False, so that saving the
    model keeps the original unembedding.
    """
    with model_lock(model):
        _orthogonalize_(model, directions, backups=None)
        config = getattr(model, "config", None)
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
