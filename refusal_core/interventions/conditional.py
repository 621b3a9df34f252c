"""Conditional interventions, after conditional activation steering (Lee et al., CAST):
read the prompt's representation first, and intervene only where it matches a condition.

A :class:`Condition` holds one or more condition directions read at one layer (the
residual stream entering that block) at the post-instruction tokens. A prompt *fires* when,
for some direction ``u_k``, the mean over those tokens of ``h . u_k / |u_k|`` is at least
``thresholds[k]``; with ``groups``, when every direction of some group reaches its
threshold (a union of polytopes: e.g. "class a's linear score beats every other class's",
one half-space per rival). An ``Intervention`` with a condition runs its ablation or addition for
the whole generation (prompt and reply tokens) on the prompts that fire and leaves the
others untouched. The condition is read on the unmodified model before generating, so
:func:`resolve_rows` turns a conditional intervention into one plain intervention per
prompt, which ``row_interventions`` then runs in one batch with every other variant.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Sequence

import torch

from refusal_core.directions.base import DirectionError, validate_vectors

__all__ = ["Condition", "condition_scores", "fires", "group_columns", "projection_scores", "resolve_rows"]


@dataclass(frozen=True, eq=False)
class Condition:
    """Fire when any direction's mean projection at ``layer`` reaches its threshold (or,
    with ``groups``, when all directions of some group reach theirs).

    ``directions`` is ``[k, d]`` (normalised internally; a ``[d]`` vector is one direction),
    ``thresholds`` one float per direction, in the units of the residual stream (a
    projection onto a unit vector). ``positions`` are the post-instruction offsets averaged
    over (None: every post-instruction token of the chat template). ``labels`` name the
    directions (e.g. the categories) for display. ``groups`` gives each direction a group
    number (None: every direction a group of its own).
    """

    directions: torch.Tensor
    thresholds: tuple[float, ...]
    layer: int
    positions: tuple[int, ...] | None = None
    labels: tuple[str, ...] = ()
    groups: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        directions = (
            self.directions[None]
            if isinstance(self.directions, torch.Tensor) and self.directions.dim() == 1
            else self.directions
        )
        validate_vectors(directions)
        object.__setattr__(self, "directions", (directions / directions.norm(dim=-1, keepdim=True)).detach().float())
        thresholds = tuple(
            float(value) for value in (self.thresholds if isinstance(self.thresholds, Sequence) else [self.thresholds])
        )
        if len(thresholds) != directions.shape[0] or not all(math.isfinite(value) for value in thresholds):
            raise ValueError(
                f"A condition needs one finite threshold per direction: {directions.shape[0]} directions, thresholds {thresholds}."
            )
        object.__setattr__(self, "thresholds", thresholds)
        object.__setattr__(self, "layer", operator.index(self.layer))
        if self.positions is not None:
            positions = tuple(operator.index(p) for p in self.positions)
            if not positions or any(p >= 0 for p in positions):
                raise ValueError(
                    f"Condition positions must be negative offsets from the prompt's end, got {positions}."
                )
            object.__setattr__(self, "positions", positions)
        if self.labels and len(self.labels) != directions.shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {directions.shape[0]} condition directions.")
        if self.groups is not None:
            groups = tuple(operator.index(g) for g in self.groups)
            if len(groups) != directions.shape[0]:
                raise ValueError(f"{len(groups)} group numbers for {directions.shape[0]} condition directions.")
            object.__setattr__(self, "groups", groups)

    @property
    def d_model(self) -> int:
        return int(self.directions.shape[1])

    def key(self) -> tuple:
        """What decides which prompts fire, for cache keys."""
        return (self.directions, self.thresholds, self.layer, self.positions, self.groups)

    @property
    def group_ids(self) -> tuple[int, ...]:
        """Each direction's group number: ``groups``, or every direction a group of its own."""
        return self.groups if self.groups is not None else tuple(range(len(self.thresholds)))

    def fires(self, scores: torch.Tensor) -> list[bool]:
        """Whether each row of ``[n, k]`` scores (from :func:`projection_scores`) fires."""
        return fires(scores, self.thresholds, self.groups)

    def margins(self, scores: torch.Tensor) -> torch.Tensor:
        """``[n]``: how far each row is inside the firing region (>= 0 fires), in residual units:
        the largest over groups of the smallest ``score - threshold`` within the group."""
        excess = scores.double() - torch.tensor(self.thresholds, dtype=torch.float64)
        per_group = [excess[:, columns].min(dim=1).values for columns in group_columns(self.group_ids)]
        return torch.stack(per_group, dim=1).max(dim=1).values


def projection_scores(points: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Mean projection over tokens, ``[n, k]``, of ``points`` ``[n, n_tokens, d]`` onto unit ``directions`` ``[k, d]``."""
    units = directions.double() / directions.double().norm(dim=-1, keepdim=True)
    return (points.double() @ units.T).mean(1)


def condition_scores(
    loaded, instructions: Sequence[str], condition: Condition, chat=None, batch_size: int = 16
) -> torch.Tensor:
    """``[n, k]`` projections of each prompt onto each condition direction, on the unmodified model."""
    from refusal_core.activations.extract import default_positions, extract_activations

    if not 0 <= condition.layer < loaded.n_layers:
        raise ValueError(
            f"The condition reads layer {condition.layer}, but this model has layers 0..{loaded.n_layers - 1}."
        )
    if condition.d_model != loaded.d_model:
        raise DirectionError(
            f"The condition's directions have width {condition.d_model}, the model's residual stream {loaded.d_model}."
        )
    # Every post-instruction position is extracted (and cached) so that conditions reading
    # different positions share one cache entry; the chosen ones are taken from it.
    acts = extract_activations(
        loaded, instructions, positions=default_positions(loaded.tokenizer, chat), chat=chat, batch_size=batch_size
    )
    index = [acts.position_index(p) for p in condition.positions] if condition.positions is not None else slice(None)
    return projection_scores(acts.residual(condition.layer)[:, index], condition.directions)


def fires(scores: torch.Tensor, thresholds: Sequence[float], groups: Sequence[int] | None = None) -> list[bool]:
    """Whether each row of ``[n, k]`` scores reaches some direction's threshold (``groups``:
    reaches the thresholds of every direction of some group)."""
    above = scores >= torch.tensor(list(thresholds), dtype=scores.dtype)
    if groups is None:
        return above.any(dim=1).tolist()
    return torch.stack([above[:, columns].all(dim=1) for columns in group_columns(groups)], dim=1).any(dim=1).tolist()


def group_columns(groups: Sequence[int]) -> list[list[int]]:
    """The direction indices of each group, in order of first appearance."""
    return [[k for k, g in enumerate(groups) if g == group] for group in dict.fromkeys(groups)]


def resolve_rows(loaded, instructions: Sequence[str], intervention, chat=None, batch_size: int = 16) -> list:
    """One plain intervention per prompt: the unconditioned one where the prompt fires, a
    baseline (same name) elsewhere. A plain intervention is returned for every prompt as is.

    Every firing prompt shares one ``Intervention`` object, so the hooks compute its basis once.
    """
    if intervention.condition is None:
        return [intervention] * len(instructions)
    fired = intervention.condition.fires(
        condition_scores(loaded, instructions, intervention.condition, chat, batch_size)
    )
    active = dataclasses.replace(intervention, condition=None)
    idle = type(intervention)(name=intervention.name)  # a baseline: the same class, nothing applied
    return [active if fire else idle for fire in fired]
