"""Switching refusal directions off (and on): ablation hooks, activation addition, weight edits.

Two ways to remove directions from the residual stream, after Arditi et al. (2024):

- *Directional ablation* (hooks): every write into the residual stream (the block input of
  each chosen layer, and the outputs of its attention-out and MLP-out modules) has the
  span of the directions projected out, at every token position.
- *Weight orthogonalization*: the same projection applied once to the weights that write
  into the residual stream (embeddings, attention-out, MLP-out, every expert). With all
  layers chosen it computes the same function as the hooks, and it is what
  ``refusal_core.interventions.export`` saves. (Where a norm follows the write, as in Gemma
  2/3, the edit projects against the norm-weighted directions: the residual stays exactly
  orthogonal to the directions, but the function differs from the hooks, which project the
  norm's output.)

*Activation addition* adds a raw (not normalised) difference-in-means vector to the input
of one layer: a positive coefficient induces refusal, a negative one suppresses it.

Every context manager here holds ``model_lock(model)`` for its whole lifetime, registers
its hooks inside ``try`` and removes them in ``finally``, so the model is never left
hooked or edited, not even after an exception.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from refusal_core.directions.base import DirectionError, DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.interventions.linalg import compute_dtype, orthogonal_stages, restore_norm
from refusal_core.interventions.spec import AblationMode, Intervention, as_direction_matrix
from refusal_core.model.families import ModelParts, model_lock, model_parts, model_width
from refusal_core.model.forward import block_hooks

__all__ = [
    "AblationMode",
    "Intervention",
    "ablate",
    "actadd",
    "apply_intervention",
    "differentiable_ablation",
    "orthogonal_stages",
    "row_interventions",
]


# --------------------------------------------------------------------------------------
# Hook machinery, shared by every context manager
# --------------------------------------------------------------------------------------


class _RowTensor:
    """A float64 master tensor whose first axis is the batch row (size 1 = shared by all rows).

    Hooks ask for it on the activation's device and in the compute dtype; each conversion
    is done once and cached, so a forward pass copies nothing.
    """

    def __init__(self, master: torch.Tensor) -> None:
        self.master = master
        self._cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def on(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        key = (device, dtype)
        tensor = self._cache.get(key)
        if tensor is None:
            tensor = self.master.to(device=device, dtype=dtype)
            self._cache[key] = tensor
        return tensor


@dataclass
class _LayerEdit:
    """What the hooks of one layer do.

    ``stages`` is ``[S, B', d, r]``: S projections applied in order, each with an orthonormal
    (or zero-padded) basis per row; ``delta`` is ``[B', d]`` added to the block input.
    B' is 1 for an edit shared by every row, else the batch size. ``renorm`` (``[B']``, 1.0 or
    0.0, None when no row needs it) marks the rows whose ablated vectors get their norm back.
    """

    stages: _RowTensor | None = None
    delta: _RowTensor | None = None
    renorm: _RowTensor | None = None


def _ablate_stages(x: torch.Tensor, stages: _RowTensor, renorm: _RowTensor | None = None) -> torch.Tensor:
    """Project every stage's basis out of ``x`` ``[B, ..., d]``, row by row, as a new tensor.

    Rows marked in ``renorm`` then get each vector's original norm back (``restore_norm``).
    """
    compute = compute_dtype(x.dtype)
    bases = stages.on(x.device, compute)
    original = xc = x.to(compute)
    for basis in bases:  # [B', d, r]; zero columns are no-ops for rows with fewer directions
        coeffs = torch.einsum("b...d,bdr->b...r", xc, basis)
        xc = xc - torch.einsum("b...r,bdr->b...d", coeffs, basis)
    if renorm is not None:
        mask = renorm.on(x.device, compute).reshape(-1, *([1] * (x.dim() - 1)))
        xc = mask * restore_norm(xc, original) + (1 - mask) * xc
    return xc.to(x.dtype)


def _add_delta(x: torch.Tensor, delta: _RowTensor) -> torch.Tensor:
    rows = delta.on(x.device, x.dtype)
    return x + rows.reshape(rows.shape[0], *([1] * (x.dim() - 2)), rows.shape[1])


def _check_rows(x: torch.Tensor, rows: int | None) -> None:
    if rows is not None and (x.dim() < 2 or x.shape[0] != rows):
        raise ValueError(
            f"row_interventions was given {rows} interventions but the model ran a batch of shape "
            f"{tuple(x.shape)}; pass exactly one Intervention per batch row."
        )


def _edited_input(edit: _LayerEdit, rows: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The block-input edit of one layer: ablate, then add (for ``forward.block_hooks``)."""

    def apply(hidden: torch.Tensor) -> torch.Tensor:
        _check_rows(hidden, rows)
        if edit.stages is not None:
            hidden = _ablate_stages(hidden, edit.stages, edit.renorm)
        if edit.delta is not None:
            hidden = _add_delta(hidden, edit.delta)
        return hidden

    return apply


def _ablate_write(x: torch.Tensor, stages: _RowTensor, rows: int | None, renorm: _RowTensor | None) -> torch.Tensor:
    """Project a write; a flattened ``[rows * seq, d]`` output (Llama 4's MoE block) is
    viewed as ``[rows, seq, d]`` so that each row keeps its own intervention."""
    if rows is not None and x.dim() == 2 and x.shape[0] % rows == 0:
        return _ablate_stages(x.reshape(rows, -1, x.shape[-1]), stages, renorm).reshape(x.shape)
    _check_rows(x, rows)
    return _ablate_stages(x, stages, renorm)


def _write_hook(stages: _RowTensor, rows: int | None, renorm: _RowTensor | None = None) -> Callable:
    """A forward hook projecting the stages out of a module's output (element 0 of a tuple)."""

    def hook(module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            return (_ablate_write(output[0], stages, rows, renorm), *output[1:])
        return _ablate_write(output, stages, rows, renorm)

    return hook


def _check_fits(intervention: Intervention, n_layers: int, d_model: int) -> None:
    """Range-check layers and widths against the model, naming the valid values."""
    if intervention.condition is not None:
        raise ValueError(
            f"Intervention {intervention.name!r} is conditional: resolve it per prompt first "
            "(interventions.conditional.resolve_rows; generate_side_by_side does this)."
        )
    width = intervention.d_model
    if width is not None and width != d_model:
        raise DirectionError(
            f"Intervention {intervention.name!r} has vectors of width {width} but the model's residual stream "
            f"has width {d_model}; use directions computed on this model."
        )
    layers = list(intervention.ablate_layers or ())
    if intervention.actadd_layer is not None:
        layers.append(intervention.actadd_layer)
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise SettingsError(
            f"Intervention {intervention.name!r} uses layer(s) {bad}, but this model has layers 0..{n_layers - 1}."
        )


def _stack_stages(per_row: Sequence[list[torch.Tensor] | None], d_model: int) -> _RowTensor | None:
    """Pad each row's list of ``[d, r]`` bases into one ``[S, B, d, r_max]`` tensor (zeros elsewhere)."""
    present = [stages for stages in per_row if stages]
    if not present:
        return None
    n_stages = max(len(stages) for stages in present)
    width = max(basis.shape[1] for stages in present for basis in stages)
    master = torch.zeros(n_stages, len(per_row), d_model, width, dtype=torch.float64)
    for row, stages in enumerate(per_row):
        for index, basis in enumerate(stages or ()):
            master[index, row, :, : basis.shape[1]] = basis
    return _RowTensor(master)


def _stack_deltas(per_row: Sequence[torch.Tensor | None], d_model: int) -> _RowTensor | None:
    if all(delta is None for delta in per_row):
        return None
    master = torch.zeros(len(per_row), d_model, dtype=torch.float64)
    for row, delta in enumerate(per_row):
        if delta is not None:
            master[row] = delta
    return _RowTensor(master)


def _plan(interventions: Sequence[Intervention], n_layers: int, d_model: int) -> dict[int, _LayerEdit]:
    """The edit of every layer that some row changes; rows are the interventions, in order.

    Bases are built once here, not per forward call. Layers where the same rows ablate share
    one stage tensor (and its device cache).
    """
    # Callers often share one Intervention between many rows; its QR is computed once.
    by_item: dict[int, list[torch.Tensor] | None] = {}
    for item in interventions:
        if id(item) not in by_item and item.ablate is not None:
            by_item[id(item)] = orthogonal_stages(item.ablate.cpu(), item.ablate_mode)
    stages = [by_item.get(id(item)) for item in interventions]
    stacked: dict[tuple[bool, ...], _RowTensor | None] = {}
    renorms: dict[tuple[bool, ...], _RowTensor | None] = {}
    plan: dict[int, _LayerEdit] = {}
    for layer in range(n_layers):
        active = tuple(
            item.ablate is not None and (item.ablate_layers is None or layer in item.ablate_layers)
            for item in interventions
        )
        if active not in stacked:
            stacked[active] = _stack_stages([s if on else None for s, on in zip(stages, active)], d_model)
            flags = [on and item.ablate_mode == "norm-preserving" for item, on in zip(interventions, active)]
            renorms[active] = _RowTensor(torch.tensor(flags, dtype=torch.float64)) if any(flags) else None
        deltas = [
            item.actadd.cpu().to(torch.float64) * float(item.actadd_coeff) if item.actadd_layer == layer else None
            for item in interventions
        ]
        edit = _LayerEdit(stages=stacked[active], delta=_stack_deltas(deltas, d_model), renorm=renorms[active])
        if edit.stages is not None or edit.delta is not None:
            plan[layer] = edit
    return plan


@contextmanager
def _planned(
    model: nn.Module, make_plan: Callable[[ModelParts, int], dict[int, _LayerEdit]], rows: int | None
) -> Iterator[None]:
    """Install the hooks of ``make_plan(parts, d_model)`` through the one hook installer."""
    with model_lock(model):
        parts = model_parts(model)
        plan = make_plan(parts, model_width(model))
        if rows is not None and 0 not in plan:
            # Row mapping is checked at layer 0 even when no row changes it, so a batch of the
            # wrong size fails loudly instead of silently pairing rows with other interventions.
            plan = {0: _LayerEdit(), **plan}
        inputs = {layer: _edited_input(edit, rows) for layer, edit in plan.items()}
        outputs = [
            (writer, _write_hook(edit.stages, rows, edit.renorm))
            for layer, edit in sorted(plan.items())
            if edit.stages is not None
            for writer in (parts.attn_writes[layer], parts.mlp_writes[layer])
        ]
        with block_hooks(model, inputs, outputs):
            yield


def _hooked(model: nn.Module, interventions: Sequence[Intervention], per_row: bool):
    """The hooks for ``interventions`` (row ``i`` runs ``interventions[i]`` when ``per_row``)."""

    def make_plan(parts: ModelParts, d_model: int) -> dict[int, _LayerEdit]:
        for item in interventions:
            _check_fits(item, parts.n_layers, d_model)
        return _plan(interventions, parts.n_layers, d_model)

    return _planned(model, make_plan, len(interventions) if per_row else None)


# --------------------------------------------------------------------------------------
# Public context managers
# --------------------------------------------------------------------------------------


@contextmanager
def apply_intervention(model: nn.Module, intervention: Intervention) -> Iterator[None]:
    """Run every row of every forward pass under ``intervention`` while the block is open."""
    with _hooked(model, [intervention], per_row=False):
        yield


@contextmanager
def differentiable_ablation(model: nn.Module, direction: torch.Tensor) -> Iterator[None]:
    """Directional ablation of one direction ``[d]`` that gradients flow back through.

    The same hooks as ``apply_intervention(model, Intervention(ablate=direction))``, at
    every layer, but the direction is used as given (not detached, not re-orthonormalised)
    so that ``refusal_core.selection.optimize`` can learn it. Pass a unit vector; it is cast to the
    compute dtype on every call, so open a fresh block after each optimizer step.
    """
    if direction.dim() != 1:
        raise ValueError(
            f"differentiable_ablation takes one direction of shape [d]; got shape {tuple(direction.shape)}."
        )

    def make_plan(parts: ModelParts, d_model: int) -> dict[int, _LayerEdit]:
        if direction.shape[0] != d_model:
            raise DirectionError(
                f"The direction has width {direction.shape[0]} but the model's residual stream has width {d_model}."
            )
        stages = _RowTensor(direction[None, None, :, None])  # one stage, shared by every row, rank 1
        return {layer: _LayerEdit(stages=stages) for layer in range(parts.n_layers)}

    with _planned(model, make_plan, None):
        yield


@contextmanager
def row_interventions(model: nn.Module, per_row: Sequence[Intervention]) -> Iterator[None]:
    """Batch row ``i`` runs under ``per_row[i]``, for side-by-side batched generation.

    Every forward pass must have batch size ``len(per_row)`` (with a KV cache, later calls
    see only the new tokens, but of the same rows); another size raises ValueError.
    Ablation uses one zero-padded ``[B, d, r_max]`` basis per stage and layer, and
    activation addition one ``[B, d]`` delta at each layer where some row adds.
    """
    interventions = list(per_row)
    if not interventions or not all(isinstance(item, Intervention) for item in interventions):
        raise ValueError("row_interventions needs one Intervention per batch row (Intervention() for a baseline row).")
    with _hooked(model, interventions, per_row=True):
        yield


@contextmanager
def ablate(
    model: nn.Module,
    directions: torch.Tensor | DirectionSet,
    layers: Sequence[int] | None = None,
    mode: AblationMode = "orthogonal",
) -> Iterator[None]:
    """Project ``directions`` ``[k, d]`` out of the block input and the attention/MLP writes
    of each layer in ``layers`` (None = all), at every position."""
    if isinstance(directions, DirectionSet):
        directions.check_width(model_width(model))
    intervention = Intervention(
        name="ablate",
        ablate=as_direction_matrix(directions),
        ablate_layers=tuple(layers) if layers is not None else None,
        ablate_mode=mode,
    )
    with apply_intervention(model, intervention):
        yield


@contextmanager
def actadd(model: nn.Module, vector: torch.Tensor, layer: int, coeff: float = 1.0) -> Iterator[None]:
    """Add ``coeff * vector`` (``[d]``, raw) to the input hidden states of ``layer`` at every position."""
    intervention = Intervention(name="actadd", actadd=vector, actadd_layer=layer, actadd_coeff=coeff)
    with apply_intervention(model, intervention):
        yield
