"""The scores of every (position, layer) candidate, the filters applied and the choice, with
their JSON file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from refusal_core.activations.cache import atomic_write_text
from refusal_core.errors import SettingsError
from refusal_core.settings import setting

__all__ = ["FORMAT_VERSION", "SelectionFilters", "SelectionResult", "load_selection"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class SelectionResult:
    """Scores of every candidate on a ``[n_positions, n_layers]`` grid (float64, NaN where
    a cell has no candidate or a measure does not apply), the filter mask and the choice.

    ``positions`` are negative token offsets and ``layers`` residual-stream layer indices,
    labelling the grid axes; ``names[i][j]`` is the candidate's name in the scored set
    (None for an empty cell). ``chosen`` is ``(position, layer)`` or None, and ``reason``
    says why. ``baseline_harmful``/``baseline_harmless`` are mean refusal scores without
    any intervention. ``timing`` holds seconds, forward passes and batch rows.
    """

    positions: tuple[int, ...]
    layers: tuple[int, ...]
    names: tuple[tuple[str | None, ...], ...]
    bypass: torch.Tensor
    induce: torch.Tensor
    kl: torch.Tensor
    passed: torch.Tensor
    chosen: tuple[int, int] | None
    reason: str
    baseline_harmful: float
    baseline_harmless: float
    n_layers: int
    filters: SelectionFilters
    provenance: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    coverage: torch.Tensor | None = None
    complete: torch.Tensor | None = None
    samples: dict = field(default_factory=dict, compare=False, repr=False)

    def eligible(self) -> torch.Tensor:
        """Boolean grid of the cells the policy may choose: complete ones (every scored one when not raced)."""
        if self.complete is not None:
            return self.complete.bool()
        return ~torch.isnan(self.bypass.double())

    def chosen_name(self) -> str | None:
        """Name of the chosen candidate in the scored direction set, or None."""
        if self.chosen is None:
            return None
        position, layer = self.chosen
        return self.names[self.positions.index(position)][self.layers.index(layer)]

    def to_json(self) -> str:
        """The whole result as JSON; NaN cells become null."""
        document = {
            "format_version": FORMAT_VERSION,
            "positions": list(self.positions),
            "layers": list(self.layers),
            "names": [list(row) for row in self.names],
            "bypass": _grid_to_lists(self.bypass),
            "induce": _grid_to_lists(self.induce),
            "kl": _grid_to_lists(self.kl),
            "passed": self.passed.tolist(),
            "chosen": list(self.chosen) if self.chosen is not None else None,
            "reason": self.reason,
            "baseline_harmful": self.baseline_harmful,
            "baseline_harmless": self.baseline_harmless,
            "n_layers": self.n_layers,
            "filters": dataclasses.asdict(self.filters),
            "provenance": self.provenance,
            "timing": self.timing,
            "coverage": _grid_to_lists(self.coverage) if self.coverage is not None else None,
            "complete": self.complete.tolist() if self.complete is not None else None,
        }
        return json.dumps(document, indent=2, default=str)

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_json` atomically (readers never see half a file)."""
        path = Path(path)
        atomic_write_text(path, self.to_json())
        return path


def load_selection(path: str | Path) -> SelectionResult:
    """Read a result written by :meth:`SelectionResult.save`."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
        return SelectionResult(
            positions=tuple(document["positions"]),
            layers=tuple(document["layers"]),
            names=tuple(tuple(row) for row in document["names"]),
            bypass=_lists_to_grid(document["bypass"]),
            induce=_lists_to_grid(document["induce"]),
            kl=_lists_to_grid(document["kl"]),
            passed=torch.tensor(document["passed"], dtype=torch.bool),
            chosen=tuple(document["chosen"]) if document["chosen"] is not None else None,
            reason=document["reason"],
            baseline_harmful=document["baseline_harmful"],
            baseline_harmless=document["baseline_harmless"],
            n_layers=document["n_layers"],
            filters=SelectionFilters(**document["filters"]),
            provenance=document.get("provenance", {}),
            timing=document.get("timing", {}),
            coverage=_lists_to_grid(document["coverage"]) if document.get("coverage") is not None else None,
            complete=torch.tensor(document["complete"], dtype=torch.bool)
            if document.get("complete") is not None
            else None,
        )
    except (OSError, json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a saved selection result ({err}); run the selection again.") from err


def _grid_to_lists(grid: torch.Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in grid.double().tolist()]


def _lists_to_grid(rows: list[list[float | None]]) -> torch.Tensor:
    return torch.tensor([[math.nan if v is None else v for v in row] for row in rows], dtype=torch.float64)


@dataclass(frozen=True)
class SelectionFilters:
    """Which candidates may be chosen (the defaults are Arditi et al.'s).

    Ablation should leave harmless behaviour alone; a true refusal direction should make the
    model refuse when added; directions from the last layers tend to act on the output
    vocabulary rather than on refusal. (Arditi's code truncates ``int(fraction * n_layers)``
    first; the two agree whenever that product is a whole number.)
    """

    max_kl: float = setting(
        0.1,
        "drop candidates whose ablation moves the harmless next-token distribution by more than this KL (nats)",
        label="Max KL",
        minimum=0.0,
        maximum=100.0,
        step=0.05,
    )
    min_induce: float = setting(
        0.0,
        "drop candidates whose addition gives a mean harmless refusal score below this",
        label="Min induce score",
        minimum=-100.0,
        maximum=100.0,
        step=0.5,
    )
    max_layer_fraction: float = setting(
        0.8, "drop layers >= this fraction of the model's layers", minimum=0.05, maximum=1.0, step=0.05
    )

    def __post_init__(self) -> None:
        if not self.max_kl >= 0:
            raise SettingsError(f"max_kl must be non-negative, got {self.max_kl}.")
        if not 0 < self.max_layer_fraction <= 1:
            raise SettingsError(f"max_layer_fraction must be in (0, 1], got {self.max_layer_fraction}.")
