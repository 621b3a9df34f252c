"""Two models' refusal geometry side by side: the cosine of their DIM directions layer by
layer, their selection scores, and the same prompts' maps.

It answers "what did fine-tuning, or my edit, change": the organism against the base model
it was tuned from, a model against its export, any two models of the same width. Layers are
paired by index; two models of different depth are paired by relative depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from refusal_core.activations.extract import Activations, extract_activations
from refusal_core.directions.dim import dim_from_activations
from refusal_core.errors import SettingsError
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat
from refusal_core.selection.scoring import score_candidates

__all__ = ["ModelComparison", "compare_models", "paired_layers"]


@dataclass(frozen=True)
class ModelComparison:
    """Per-layer figures of models A and B at one post-instruction position.

    ``layers_a[i]`` and ``layers_b[i]`` are the paired block inputs; ``cosine[i]`` the cosine
    of their DIM directions; ``norm_a``/``norm_b`` the DIM norms; ``scores`` (when scored)
    maps ``"a"``/``"b"`` to per-layer ``bypass``, ``induce`` and ``kl`` lists and the layer
    each model's selection chose.
    """

    model_a: str
    model_b: str
    position: int
    layers_a: tuple[int, ...]
    layers_b: tuple[int, ...]
    cosine: np.ndarray
    norm_a: np.ndarray
    norm_b: np.ndarray
    scores: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "position": self.position,
            "layers": [
                {"layer_a": la, "layer_b": lb, "cosine": float(c), "norm_a": float(na), "norm_b": float(nb)}
                for la, lb, c, na, nb in zip(self.layers_a, self.layers_b, self.cosine, self.norm_a, self.norm_b)
            ],
            "scores": self.scores,
        }


def paired_layers(n_a: int, n_b: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Layer pairs: by index for equal depths, else each of the shallower model's layers with
    the deeper model's layer at the same relative depth."""
    if n_a == n_b:
        return tuple(range(n_a)), tuple(range(n_b))
    short, long_ = min(n_a, n_b), max(n_a, n_b)
    mapped = tuple(round(layer * (long_ - 1) / max(short - 1, 1)) for layer in range(short))
    return (tuple(range(short)), mapped) if n_a <= n_b else (mapped, tuple(range(short)))


def _dims(harmful: Activations, harmless: Activations, position: int) -> torch.Tensor:
    """``[n_layers, d]`` float64 DIM at ``position`` for every block input."""
    index = harmful.position_index(position)
    layers = range(harmful.n_layers)
    means = [
        torch.stack([acts.residual(layer)[:, index].double().mean(0) for layer in layers])
        for acts in (harmful, harmless)
    ]
    return means[0] - means[1]


def _scores(
    loaded: LoadedModel, harmful: Activations, harmless: Activations, val: tuple[list[str], list[str]], chat, progress
) -> dict:
    candidates = dim_from_activations(
        harmful, harmless, {"model": loaded.spec, "method": "dim", "position": harmful.positions[0]}
    )
    result = score_candidates(loaded, candidates, val[0], val[1], progress=progress, chat=chat)
    chosen = result.chosen
    as_list = lambda grid: [None if not torch.isfinite(v) else float(v) for v in grid[0]]  # noqa: E731
    return {
        "layers": list(result.layers),
        "bypass": as_list(result.bypass),
        "induce": as_list(result.induce),
        "kl": as_list(result.kl),
        "chosen_layer": None if chosen is None else int(result.layers[chosen[1]]),
        "reason": result.reason,
    }


def compare_models(
    model_a: LoadedModel,
    model_b: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    position: int = -1,
    val: tuple[Sequence[str], Sequence[str]] | None = None,
    chat: ChatFormat | None = None,
    progress: Progress | None = None,
) -> tuple[ModelComparison, dict[str, tuple[Activations, Activations]]]:
    """Compare A and B on the same prompts; returns the comparison and each model's
    (harmful, harmless) activations at ``position`` (for drawing their maps).

    With ``val`` (harmful, harmless validation prompts) each model's last-position DIM
    candidates are also scored (bypass, induce, KL) as ``directions select`` scores them.
    """
    if model_a.d_model != model_b.d_model:
        raise SettingsError(
            f"{model_a.spec} has width {model_a.d_model} and {model_b.spec} width {model_b.d_model}; "
            "compare two models of the same residual width (a model and its fine-tune or export)."
        )
    if position >= 0:
        raise SettingsError(f"--position must be a negative offset from the end (e.g. -1), got {position}.")
    acts = {}
    steps = 4
    for step, (key, loaded) in enumerate((("a", model_a), ("b", model_b))):
        acts[key] = tuple(
            extract_activations(loaded, list(prompts), positions=(position,), chat=chat)
            for prompts in (harmful, harmless)
        )
        if progress:
            progress(2 * step + 2, steps, stage=f"activations of model {key.upper()}")
    layers_a, layers_b = paired_layers(model_a.n_layers, model_b.n_layers)
    dims_a, dims_b = _dims(*acts["a"], position)[list(layers_a)], _dims(*acts["b"], position)[list(layers_b)]
    cosine = torch.nn.functional.cosine_similarity(dims_a, dims_b, dim=-1).numpy()
    scores = {}
    if val:
        for key, loaded in (("a", model_a), ("b", model_b)):
            # The scoring reports its rows; the stage says whose they are.
            rows = (
                None
                if progress is None
                else (
                    lambda done, total, _key=key, **info: progress(
                        done, total, stage=f"selection scores of model {_key.upper()}"
                    )
                )
            )
            scores[key] = _scores(loaded, *acts[key], (list(val[0]), list(val[1])), chat, rows)
    comparison = ModelComparison(
        model_a=model_a.spec,
        model_b=model_b.spec,
        position=position,
        layers_a=layers_a,
        layers_b=layers_b,
        cosine=cosine,
        norm_a=dims_a.norm(dim=-1).numpy(),
        norm_b=dims_b.norm(dim=-1).numpy(),
        scores=scores,
    )
    return comparison, acts
