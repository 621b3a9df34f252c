"""Planted ground-truth directions saved with a model, and how well a method recovers them.

A model folder may hold ``planted-directions.safetensors`` / ``.json`` (a direction set, one
direction per planted mechanism; the ``two-mechanisms`` organism variant writes them). A
method's directions *recover* a planted direction ``p`` to the degree that

- ``best``: the largest |cosine| of any one recovered direction with ``p`` (the sign does not
  matter to ablation, which removes the line);
- ``span``: the cosine of ``p`` with its projection onto the span of the recovered set, i.e.
  the norm of that projection of the unit ``p``: 1 when ablating the set removes ``p`` whole.
"""

from __future__ import annotations

from pathlib import Path

import torch

from refusal_core.directions.base import DirectionSet, load_direction_set

__all__ = ["PLANTED_FILE", "load_planted", "planted_directions_path", "recovery"]

PLANTED_FILE = "planted-directions"


def planted_directions_path(model_dir: str | Path) -> Path:
    return Path(model_dir) / f"{PLANTED_FILE}.safetensors"


def load_planted(model_dir: str | Path | None) -> DirectionSet | None:
    """The planted directions saved in a model folder, or None where it has none."""
    if not model_dir:
        return None
    path = planted_directions_path(model_dir)
    return load_direction_set(path) if path.is_file() else None


def recovery(vectors: torch.Tensor, planted: DirectionSet) -> dict[str, dict[str, float]]:
    """Per planted direction name: ``best`` and ``span`` (see the module docstring) of
    ``vectors`` ``[k, d]``, computed in float64."""
    found = vectors.detach().to(torch.float64)
    found = found[found.norm(dim=-1) > 0]
    result = {}
    for name, vector in zip(planted.names, planted.vectors.to(torch.float64)):
        unit = vector / vector.norm()
        if not len(found):
            result[name] = {"best": 0.0, "span": 0.0}
            continue
        cosines = (found / found.norm(dim=-1, keepdim=True)) @ unit
        basis, _ = torch.linalg.qr(found.T)  # [d, k] orthonormal columns spanning the set
        result[name] = {"best": float(cosines.abs().max()), "span": float((basis.T @ unit).norm())}
    return result
