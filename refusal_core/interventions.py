"""Switching refusal directions off (and on): ablation hooks, activation addition, weight edits.

Two ways to remove directions from the residual stream, after Arditi et al. (2024):

- *Directional ablation* (hooks): every write into the residual stream (the block input of
  each chosen layer, and the outputs of its attention-out and MLP-out modules) has the
  span of the directions projected out, at every token position.
- *Weight orthogonalization*: the same projection applied once to the weights that write
  into the residual stream (embeddings, attention-out, MLP-out). With all layers chosen it
  computes the same function as the hooks, and it is what ``refusal_core.export`` saves.

*Activation addition* adds a raw (not normalised) difference-in-means vector to the input
of one layer: a positive coefficient induces refusal, a negative one suppresses it.

Every context manager here holds ``model_lock(model)`` for its whole lifetime, registers
its hooks inside ``try`` and removes them in ``finally``, so the model is never left
hooked or edited, not even after an exception.
"""

from __future__ import annotations

import math
import operator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import torch
from torch import nn

from refusal_core.directions import DirectionError, DirectionSet, validate_vectors
from refusal_core.models import ModelParts, model_lock, model_parts

__all__ = [
    "AblationMode",
    "Intervention",
    "ablate",
    "actadd",
    "apply_intervention",
    "differentiable_ablation",
    "orthogonal_stages",
    "orthogonalize_weights_",
    "orthogonalized_weights",
    "orthonormal_basis",
    "project_out",
    "row_interventions",
]

AblationMode = Literal["orthogonal", "sequential"]
_MODES = ("orthogonal", "sequential")
# A QR diagonal this small against the largest one means the direction adds nothing new.
_RANK_TOLERANCE = 1e-6


# --------------------------------------------------------------------------------------
# Pure mathematics
# --------------------------------------------------------------------------------------


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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32 (bf16/fp16 lose too much)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def project_out(x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``x - (x @ Q) Q^T`` for ``x`` ``[..., d]`` and an orthonormal ``Q`` ``[d, r]``.

    Computed in float32 (float64 for float64 input) and cast back to ``x.dtype``. Returns a
    new tensor; ``x`` is never modified.
    """
    compute = _compute_dtype(x.dtype)
    q = basis.to(device=x.device, dtype=compute)
    xc = x.to(compute)
    return (xc - (xc @ q) @ q.T).to(x.dtype)


def orthogonal_stages(directions: torch.Tensor, mode: AblationMode = "orthogonal") -> list[torch.Tensor]:
    """The projections that ablate ``directions`` ``[k, d]``, as orthonormal bases ``[d, r]``.

    ``orthogonal``: one stage, the QR basis of the span (all directions removed exactly).
    ``sequential`` (Piras et al.): one stage per unit direction, applied in order without
    orthogonalizing, so only the last direction is guaranteed to be absent afterwards.
    """
    if mode == "orthogonal":
        return [orthonormal_basis(directions)]
    if mode == "sequential":
        validate_vectors(directions)
        units = directions.detach().to(torch.float64)
        units = units / units.norm(dim=-1, keepdim=True)
        return [unit[:, None] for unit in units]
    raise ValueError(f"Unknown ablation mode {mode!r}; use one of {', '.join(_MODES)}.")


# --------------------------------------------------------------------------------------
# What to do: one Intervention per row
# --------------------------------------------------------------------------------------


def _as_direction_matrix(directions: torch.Tensor | DirectionSet) -> torch.Tensor:
    if isinstance(directions, DirectionSet):
        return directions.vectors
    if isinstance(directions, torch.Tensor) and directions.dim() == 1:
        return directions[None]
    return directions


@dataclass(frozen=True, eq=False)
class Intervention:
    """One way of running the model: baseline, directional ablation, activation addition or both.

    ``ablate`` holds raw directions ``[k, d]`` (normalised internally); ``ablate_layers`` the
    layers whose residual writes are projected (None = all layers, as in Arditi et al.);
    ``ablate_mode`` is ``orthogonal`` (project out the span) or ``sequential`` (project out
    unit directions one after another, the SOM paper's variant). ``actadd`` is a raw
    vector ``[d]`` added, times ``actadd_coeff``, to the input of layer ``actadd_layer``
    at every position; it is not normalised because Arditi et al. add the difference in
    means itself. Where a layer both ablates and adds, the ablation comes first, so the
    addition is exactly ``coeff * vector`` at that layer.
    """

    name: str = "baseline"
    ablate: torch.Tensor | None = None
    ablate_layers: tuple[int, ...] | None = None
    ablate_mode: AblationMode = "orthogonal"
    actadd: torch.Tensor | None = None
    actadd_layer: int | None = None
    actadd_coeff: float = 1.0

    def __post_init__(self) -> None:
        if self.ablate is not None:
            matrix = _as_direction_matrix(self.ablate)
            if not isinstance(matrix, torch.Tensor):
                raise self._error("ablate must be a [k, d] tensor or a DirectionSet.", DirectionError)
            validate_vectors(matrix)
            object.__setattr__(self, "ablate", matrix.detach())
        if self.ablate_mode not in _MODES:
            raise self._error(f"ablate_mode {self.ablate_mode!r} is unknown; use one of {', '.join(_MODES)}.")
        if self.ablate_layers is not None:
            self._check_ablate_layers()
        if self.actadd is not None:
            self._check_actadd()
        elif self.actadd_layer is not None:
            raise self._error("actadd_layer is set but actadd is None; give the vector to add.")

    def _error(self, message: str, kind: type[ValueError] = ValueError) -> ValueError:
        return kind(f"Intervention {self.name!r}: {message}")

    def _check_ablate_layers(self) -> None:
        if self.ablate is None:
            raise self._error("ablate_layers is set but ablate is None; give the directions to ablate.")
        try:
            layers = tuple(operator.index(layer) for layer in self.ablate_layers)
        except TypeError:
            layers = ()
        if not layers:
            raise self._error("ablate_layers must be a non-empty tuple of ints, or None for all layers.")
        object.__setattr__(self, "ablate_layers", tuple(sorted(set(layers))))

    def _check_actadd(self) -> None:
        vector = self.actadd
        if not isinstance(vector, torch.Tensor) or vector.dim() != 1:
            shape = tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__
            raise self._error(f"actadd must be a [d_model] vector, got {shape}.", DirectionError)
        validate_vectors(vector[None])
        object.__setattr__(self, "actadd", vector.detach())
        try:
            object.__setattr__(self, "actadd_layer", operator.index(self.actadd_layer))
        except TypeError:
            raise self._error("actadd needs actadd_layer (an int), the layer whose input gets the vector.") from None
        if not math.isfinite(float(self.actadd_coeff)):
            raise self._error("actadd_coeff must be a finite number.")
        if self.ablate is not None and self.ablate.shape[1] != vector.shape[0]:
            widths = f"ablate has width {self.ablate.shape[1]} but actadd has width {vector.shape[0]}"
            raise self._error(f"{widths}; both must be the model's residual width.", DirectionError)

    @property
    def is_baseline(self) -> bool:
        """True when the intervention changes nothing."""
        return self.ablate is None and self.actadd is None

    @property
    def d_model(self) -> int | None:
        """The width the vectors expect, or None for the baseline."""
        if self.ablate is not None:
            return int(self.ablate.shape[1])
        return int(self.actadd.shape[0]) if self.actadd is not None else None

    @staticmethod
    def from_directions(
        name: str,
        directions: DirectionSet,
        names: Sequence[str] | None = None,
        layers: Sequence[int] | None = None,
        mode: AblationMode = "orthogonal",
    ) -> "Intervention":
        """Ablate the named directions of a set (all of them when ``names`` is None)."""
        chosen = directions.select(names) if names is not None else directions
        return Intervention(
            name=name,
            ablate=chosen.vectors,
            ablate_layers=tuple(layers) if layers is not None else None,
            ablate_mode=mode,
        )

    @staticmethod
    def from_direction_addition(
        name: str, directions: DirectionSet, direction: str, coeff: float = 1.0, layer: int | None = None
    ) -> "Intervention":
        """Add one named direction (raw, not normalised) at ``layer``, by default the layer it was read at."""
        chosen = directions.select([direction])
        if layer is None:
            layer = chosen.provenance[0].get("layer")
            if layer is None:
                raise ValueError(f"Direction {direction!r} has no layer in its provenance; pass layer=.")
        return Intervention(name=name, actadd=chosen.vectors[0], actadd_layer=int(layer), actadd_coeff=float(coeff))


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
    B' is 1 for an edit shared by every row, else the batch size.
    """

    stages: _RowTensor | None = None
    delta: _RowTensor | None = None


def _ablate_stages(x: torch.Tensor, stages: _RowTensor) -> torch.Tensor:
    """Project every stage's basis out of ``x`` ``[B, ..., d]``, row by row, as a new tensor."""
    compute = _compute_dtype(x.dtype)
    bases = stages.on(x.device, compute)
    xc = x.to(compute)
    for basis in bases:  # [B', d, r]; zero columns are no-ops for rows with fewer directions
        coeffs = torch.einsum("b...d,bdr->b...r", xc, basis)
        xc = xc - torch.einsum("b...r,bdr->b...d", coeffs, basis)
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


def _layer_pre_hook(edit: _LayerEdit, rows: int | None) -> Callable:
    """A with_kwargs pre-hook that ablates, then adds to, the block input (positional or keyword)."""

    def hook(module: nn.Module, args: tuple, kwargs: dict):
        from_kwargs = not (args and isinstance(args[0], torch.Tensor))
        hidden = kwargs.get("hidden_states") if from_kwargs else args[0]
        if not isinstance(hidden, torch.Tensor):
            raise RuntimeError(f"{type(module).__name__} was called without hidden_states; cannot intervene on it.")
        _check_rows(hidden, rows)
        if edit.stages is not None:
            hidden = _ablate_stages(hidden, edit.stages)
        if edit.delta is not None:
            hidden = _add_delta(hidden, edit.delta)
        if from_kwargs:
            return args, {**kwargs, "hidden_states": hidden}
        return (hidden, *args[1:]), kwargs

    return hook


def _write_hook(stages: _RowTensor, rows: int | None) -> Callable:
    """A forward hook projecting the stages out of a module's output (element 0 of a tuple)."""

    def hook(module: nn.Module, args: tuple, output):
        if isinstance(output, tuple):
            _check_rows(output[0], rows)
            return (_ablate_stages(output[0], stages), *output[1:])
        _check_rows(output, rows)
        return _ablate_stages(output, stages)

    return hook


def _model_width(model: nn.Module) -> int:
    return int(model.get_input_embeddings().weight.shape[-1])


def _check_fits(intervention: Intervention, n_layers: int, d_model: int) -> None:
    """Range-check layers and widths against the model, naming the valid values."""
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
        raise ValueError(
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
    plan: dict[int, _LayerEdit] = {}
    for layer in range(n_layers):
        active = tuple(
            item.ablate is not None and (item.ablate_layers is None or layer in item.ablate_layers)
            for item in interventions
        )
        if active not in stacked:
            stacked[active] = _stack_stages([s if on else None for s, on in zip(stages, active)], d_model)
        deltas = [
            item.actadd.cpu().to(torch.float64) * float(item.actadd_coeff) if item.actadd_layer == layer else None
            for item in interventions
        ]
        edit = _LayerEdit(stages=stacked[active], delta=_stack_deltas(deltas, d_model))
        if edit.stages is not None or edit.delta is not None:
            plan[layer] = edit
    return plan


def _register(parts: ModelParts, plan: dict[int, _LayerEdit], rows: int | None, handles: list) -> None:
    """Register the hooks of ``plan``, appending each handle as soon as it exists."""
    if rows is not None and 0 not in plan:
        # Row mapping is checked at layer 0 even when no row changes it, so a batch of the
        # wrong size fails loudly instead of silently pairing rows with other interventions.
        plan = {0: _LayerEdit(), **plan}
    for layer, edit in sorted(plan.items()):
        handles.append(parts.layers[layer].register_forward_pre_hook(_layer_pre_hook(edit, rows), with_kwargs=True))
        if edit.stages is not None:
            handles.append(parts.attn_writes[layer].register_forward_hook(_write_hook(edit.stages, rows)))
            handles.append(parts.mlp_writes[layer].register_forward_hook(_write_hook(edit.stages, rows)))


@contextmanager
def _planned(model: nn.Module, make_plan: Callable[[ModelParts, int], dict[int, _LayerEdit]], rows: int | None) -> Iterator[None]:
    """Hold the model lock, install the hooks of ``make_plan(parts, d_model)``, always remove them."""
    with model_lock(model):
        handles: list = []
        try:
            parts = model_parts(model)
            _register(parts, make_plan(parts, _model_width(model)), rows, handles)
            yield
        finally:
            for handle in handles:
                handle.remove()


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
    so that ``refusal_core.optimize`` can learn it. Pass a unit vector; it is cast to the
    compute dtype on every call, so open a fresh block after each optimizer step.
    """
    if direction.dim() != 1:
        raise ValueError(f"differentiable_ablation takes one direction of shape [d]; got shape {tuple(direction.shape)}.")

    def make_plan(parts: ModelParts, d_model: int) -> dict[int, _LayerEdit]:
        if direction.shape[0] != d_model:
            raise DirectionError(f"The direction has width {direction.shape[0]} but the model's residual stream has width {d_model}.")
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
        directions.check_width(_model_width(model))
    intervention = Intervention(
        name="ablate",
        ablate=_as_direction_matrix(directions),
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


# --------------------------------------------------------------------------------------
# Weight orthogonalization
# --------------------------------------------------------------------------------------


def _output_axis(module: nn.Module) -> int:
    """Which axis of ``module.weight`` indexes the residual stream it writes to."""
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Embedding):
        return -1  # [vocab, d]
    if isinstance(module, Conv1D):
        return -1  # GPT-2's Conv1D stores [d_in, d_out]
    if isinstance(module, nn.Linear):
        return 0  # [d_out, d_in]
    raise ValueError(
        f"Cannot orthogonalize the weights of a {type(module).__name__}; only nn.Linear, nn.Embedding and "
        "transformers' Conv1D are supported. Use the ablate() hooks instead."
    )


def _orthogonalized(weight: torch.Tensor, basis: torch.Tensor, axis: int) -> torch.Tensor:
    """``weight`` with the basis projected out of its residual-stream axis (0 or -1), same dtype."""
    if axis == 0:
        return project_out(weight.T, basis).T
    return project_out(weight, basis)


def _weight_edits(parts: ModelParts) -> list[tuple[torch.Tensor, int, nn.Module]]:
    """(parameter, residual axis, module) for every weight and bias that writes to the residual stream.

    Built, and checked, before anything is edited, so an unsupported module or a quantized
    weight fails with the model untouched. A Parameter shared by two modules appears once.
    """
    edits, seen = [], set()
    for module in [*parts.embeddings, *parts.attn_writes, *parts.mlp_writes]:
        axis = _output_axis(module)
        for param_name, param_axis in (("weight", axis), ("bias", -1)):
            param = getattr(module, param_name, None)
            if param is None or id(param) in seen:
                continue
            if not param.is_floating_point() or param.device.type == "meta":
                raise ValueError(
                    f"Cannot edit the {param.dtype} {param_name} of {type(module).__name__} on {param.device} "
                    "(quantized or offloaded); use the ablate() hooks instead."
                )
            seen.add(id(param))
            edits.append((param, param_axis, module))
    return edits


def _check_directions(model: nn.Module, directions: torch.Tensor | DirectionSet) -> torch.Tensor:
    """The ``[k, d]`` direction matrix, after checking its width against the model."""
    d_model = _model_width(model)
    if isinstance(directions, DirectionSet):
        directions.check_width(d_model)
    matrix = _as_direction_matrix(directions)
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2 or matrix.shape[1] != d_model:
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix).__name__
        raise DirectionError(
            f"Directions must be [k, {d_model}] for this model, got {shape}; use directions computed on it."
        )
    validate_vectors(matrix)
    return matrix


def _check_orthogonalizable(model: nn.Module, parts: ModelParts) -> None:
    if not parts.family.weights_orthogonalizable:
        raise ValueError(
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
    edits = _weight_edits(parts)
    tied = _tied_embedding(parts)
    tied_weight = tied.weight if tied is not None else None
    if tied_weight is not None:
        parts.lm_head.weight = nn.Parameter(tied_weight.detach().clone(), requires_grad=tied_weight.requires_grad)
    for param, axis, _module in edits:
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
