"""What to do to a forward pass: an :class:`Intervention` is a baseline, a directional
ablation, an activation addition or both, validated once when it is built.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from refusal_core.directions.base import DirectionError, DirectionSet, validate_vectors
from refusal_core.errors import SettingsError
from refusal_core.interventions.conditional import Condition

__all__ = [
    "ABLATION_MODES",
    "AblationMode",
    "as_direction_matrix",
    "Intervention",
]

AblationMode = Literal["orthogonal", "sequential", "norm-preserving"]


# ``norm-preserving``: project out the span like ``orthogonal``, then give each edited vector
# (a residual at a hook; a residual-side row or column of a weight) its original norm back.
ABLATION_MODES = ("orthogonal", "sequential", "norm-preserving")


def as_direction_matrix(directions: torch.Tensor | DirectionSet) -> torch.Tensor:
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
    ``ablate_mode`` is ``orthogonal`` (project out the span), ``sequential`` (project out
    unit directions one after another, the SOM paper's variant) or ``norm-preserving``
    (project out the span, then rescale each residual vector to its norm before). ``actadd`` is a raw
    vector ``[d]`` added, times ``actadd_coeff``, to the input of layer ``actadd_layer``
    at every position; it is not normalised because Arditi et al. add the difference in
    means itself. Where a layer both ablates and adds, the ablation comes first, so the
    addition is exactly ``coeff * vector`` at that layer. ``condition`` (optional) limits it
    to the prompts that fire (``interventions.conditional``); generation resolves it per prompt.
    """

    name: str = "baseline"
    ablate: torch.Tensor | None = None
    ablate_layers: tuple[int, ...] | None = None
    ablate_mode: AblationMode = "orthogonal"
    actadd: torch.Tensor | None = None
    actadd_layer: int | None = None
    actadd_coeff: float = 1.0
    condition: Condition | None = None

    def __post_init__(self) -> None:
        if self.ablate is not None:
            matrix = as_direction_matrix(self.ablate)
            if not isinstance(matrix, torch.Tensor):
                raise self._error("ablate must be a [k, d] tensor or a DirectionSet.", DirectionError)
            validate_vectors(matrix)
            object.__setattr__(self, "ablate", matrix.detach())
        if self.ablate_mode not in ABLATION_MODES:
            raise self._error(f"ablate_mode {self.ablate_mode!r} is unknown; use one of {', '.join(ABLATION_MODES)}.")
        if self.ablate_layers is not None:
            self._check_ablate_layers()
        if self.actadd is not None:
            self._check_actadd()
        elif self.actadd_layer is not None:
            raise self._error("actadd_layer is set but actadd is None; give the vector to add.")
        if self.condition is not None:
            self._check_condition()

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

    def _check_condition(self) -> None:
        if not isinstance(self.condition, Condition):
            raise self._error(f"condition must be a Condition, got {type(self.condition).__name__}.")
        if self.ablate is None and self.actadd is None:
            raise self._error("a condition needs something to apply when it fires; give ablate or actadd.")
        if self.condition.d_model != self.d_model:
            raise self._error(
                f"the condition has width {self.condition.d_model} but the vectors {self.d_model}.", DirectionError
            )

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
    ) -> Intervention:
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
    ) -> Intervention:
        """Add one named direction (raw, not normalised) at ``layer``, by default the layer it was read at."""
        chosen = directions.select([direction])
        if layer is None:
            layer = chosen.provenance[0].get("layer")
            if layer is None:
                raise SettingsError(f"Direction {direction!r} has no layer in its provenance; pass layer=.")
        return Intervention(name=name, actadd=chosen.vectors[0], actadd_layer=int(layer), actadd_coeff=float(coeff))
