"""Direction sets with provenance, difference-in-means directions and their comparisons."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from refusal_core.activations.cache import atomic_write_text, save_entry
from refusal_core.errors import UserError

__all__ = [
    "DirectionError",
    "DirectionSet",
    "cosine_matrix",
    "direction_set_from_bytes",
    "load_direction_set",
]

FORMAT_VERSION = 1


class DirectionError(UserError, ValueError):
    """A direction set is malformed or does not fit the model; the message says how to fix it."""


@dataclass(frozen=True)
class DirectionSet:
    """Named residual-stream directions, each with where it came from.

    ``vectors`` has shape ``[n_directions, d_model]`` (float32, not normalised: the DIM
    norm is information). ``provenance[i]`` records at least ``model``, ``layer``,
    ``position``, ``method``, ``data_hash`` and ``params`` for direction ``i``.
    """

    vectors: torch.Tensor
    names: tuple[str, ...]
    provenance: tuple[dict, ...]
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_vectors(self.vectors)
        if len(self.names) != self.vectors.shape[0] or len(self.provenance) != self.vectors.shape[0]:
            raise DirectionError(
                f"{self.vectors.shape[0]} vectors but {len(self.names)} names and {len(self.provenance)} provenance entries."
            )
        if len(set(self.names)) != len(self.names):
            raise DirectionError("Direction names must be unique within a set.")
        for name, entry in zip(self.names, self.provenance):
            problem = _provenance_problem(name, entry)
            if problem:
                raise DirectionError(
                    f"{problem}; export the set again with this toolkit, or fix that entry of the .json file."
                )
        if not isinstance(self.meta, dict):
            raise DirectionError(
                f"The set's meta is a {type(self.meta).__name__}, not a JSON object; export the set again."
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    def norms(self) -> list[float]:
        """The length of each direction, in set order."""
        return self.vectors.double().norm(dim=-1).tolist()

    def unit(self) -> torch.Tensor:
        """The vectors scaled to unit norm, ``[n, d]``."""
        return self.vectors / self.vectors.norm(dim=-1, keepdim=True)

    def select(self, names: Iterable[str]) -> DirectionSet:
        """The sub-set with these names, in the given order; unknown names raise."""
        wanted = list(names)
        missing = [name for name in wanted if name not in self.names]
        if missing:
            raise DirectionError(
                f"No direction named {', '.join(missing)}; use one of this set's names: {', '.join(self.names)}."
            )
        index = [self.names.index(name) for name in wanted]
        return dataclasses.replace(
            self,
            vectors=self.vectors[index],
            names=tuple(wanted),
            provenance=tuple(self.provenance[i] for i in index),
        )

    def check_width(self, d_model: int) -> None:
        if self.d_model != d_model:
            raise DirectionError(
                f"These directions have width {self.d_model} but the model's residual stream has width "
                f"{d_model}; they were made for another model ({self.meta.get('model', 'unknown')}). Use directions "
                "computed on this model, or load the model they were made for."
            )

    def save(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<stem>.safetensors`` (vectors) and ``<stem>.json`` (names, provenance, meta)."""
        tensors_path, json_path = _paths(path)
        save_entry(tensors_path, {"vectors": self.vectors.float()}, {"format": "refusal-atlas-directions"})
        document = {
            "format_version": FORMAT_VERSION,
            "names": list(self.names),
            "provenance": list(self.provenance),
            "meta": self.meta,
            "shape": list(self.vectors.shape),
        }
        atomic_write_text(json_path, json.dumps(document, indent=2, default=str))
        return tensors_path, json_path

    @staticmethod
    def concat(sets: Sequence[DirectionSet], prefixes: Sequence[str] | None = None) -> DirectionSet:
        """One set holding all directions; ``prefixes`` keep names unique across sets."""
        if not sets:
            raise DirectionError("Nothing to concatenate.")
        prefixes = prefixes or [""] * len(sets)
        names = tuple(f"{prefix}{name}" for prefix, s in zip(prefixes, sets) for name in s.names)
        return DirectionSet(
            vectors=torch.cat([s.vectors for s in sets]),
            names=names,
            provenance=tuple(p for s in sets for p in s.provenance),
            meta={"combined_from": [s.meta for s in sets]},
        )


# Provenance keys with a fixed type where present: what the pages and exports read.
_PROVENANCE_TYPES = {
    "layer": (int, type(None)),
    "position": (int, type(None)),
    "model": (str, type(None)),
    "method": (str, type(None)),
    "data_hash": (str, type(None)),
    "params": (dict,),
}


def _provenance_problem(name: object, entry: object) -> str | None:
    """What is wrong with one direction's name and provenance entry, or None."""
    if not isinstance(name, str) or not name:
        return f"Direction name {name!r} is not a non-empty string"
    if not isinstance(entry, dict):
        return f"The provenance of direction {name!r} is {entry!r}, not a JSON object"
    for key, types in _PROVENANCE_TYPES.items():
        value = entry.get(key)
        if key in entry and (not isinstance(value, types) or isinstance(value, bool)):
            allowed = " or ".join(
                "null" if t is type(None) else {"int": "an integer", "str": "text", "dict": "an object"}[t.__name__]
                for t in types
            )
            return f"The provenance of direction {name!r} has {key}={value!r}; it must be {allowed}"
    return None


def validate_vectors(vectors: torch.Tensor) -> None:
    """Directions must be a finite, non-zero ``[n, d]`` float tensor."""
    if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2 or vectors.shape[0] == 0:
        shape = tuple(vectors.shape) if isinstance(vectors, torch.Tensor) else type(vectors).__name__
        raise DirectionError(f"Directions must be a non-empty [n_directions, d_model] tensor, got {shape}.")
    if not torch.isfinite(vectors).all():
        raise DirectionError("Directions contain NaN or infinite values; recompute them from valid activations.")
    if (vectors.norm(dim=-1) == 0).any():
        raise DirectionError("A direction has zero norm and cannot be used; drop it or recompute the set.")


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in {".safetensors", ".json"} else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def load_direction_set(path: str | Path, d_model: int | None = None) -> DirectionSet:
    """Load and validate a saved set (either file of the pair, or their common stem)."""
    tensors_path, json_path = _paths(path)
    for needed in (tensors_path, json_path):
        if not needed.is_file():
            raise DirectionError(
                f"{needed} not found; a direction set is a .safetensors file plus a .json file beside it. Check the "
                "path, or give the stem of a set saved by this toolkit (e.g. cache/dim for cache/dim.safetensors)."
            )
    return direction_set_from_bytes(
        tensors_path.read_bytes(), json_path.read_bytes(), str(tensors_path), str(json_path), d_model
    )


def direction_set_from_bytes(
    tensors: bytes, metadata: bytes, tensors_label: str, json_label: str, d_model: int | None = None
) -> DirectionSet:
    """Parse and validate a set from the bytes of its two files; errors name the labels
    (the user's file names), never a temporary copy."""
    try:
        vectors = load_safetensors(tensors)["vectors"].float()
    except (SafetensorError, KeyError, OSError) as err:
        raise DirectionError(
            f"{tensors_label} is not a readable direction file ({err}); export the set again."
        ) from err
    try:
        document = json.loads(metadata.decode())
        names, provenance = tuple(document["names"]), tuple(document["provenance"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as err:
        raise DirectionError(f"{json_label} is not valid direction metadata ({err}); export the set again.") from err
    for name, entry in zip(names, provenance):
        problem = _provenance_problem(name, entry)
        if problem:
            raise DirectionError(f"{json_label}: {problem}; export the set again with this toolkit, or fix that entry.")
    try:
        directions = DirectionSet(vectors=vectors, names=names, provenance=provenance, meta=document.get("meta", {}))
    except DirectionError as err:
        raise DirectionError(f"{tensors_label}: {err}") from err
    if d_model is not None:
        try:
            directions.check_width(d_model)
        except DirectionError as err:
            raise DirectionError(f"{tensors_label}: {err}") from err
    return directions


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities of ``[n, d]`` vectors, ``[n, n]`` in float64."""
    unit = vectors.double() / vectors.double().norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return unit @ unit.T
