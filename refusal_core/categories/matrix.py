"""``categories report``: switch refusal off for one category at a time, measured on the
test split of every category.

Two matrices, rows the category whose refusal is switched off, columns the category whose
test prompts are measured (refused share of greedy replies, by the judge panel unless told
otherwise; broken and deflected replies are counted apart, never as refusal nor as compliance):

- *ablation*: category ``i``'s direction (``full``: its difference in means, or
  ``specific``: its part orthogonal to the shared direction) projected out at every layer,
  on every prompt. A model with one refusal for every category loses all of it (``full``)
  or none (``specific``).
- *conditional*: the shared refusal direction ablated only on the prompts whose
  representation fires category ``i``'s condition (``categories.conditions``: by default a
  prompt fires the one category its discriminant scores highest, with the layer, shrinkage
  and margin chosen on val). A prompt that fires
  gives exactly its reply under the shared ablation, one that does not its baseline reply
  (``interventions.conditional``; tested), so this matrix is read off two generated and
  judged columns, baseline and shared ablation, and each prompt's condition.

Selectivity of row ``i``: refusal on its own category against the mean and the minimum of
the others; the goal is own <= 20%, every other >= 80%, harmless refusal <= 5%.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Sequence

import torch

from refusal_core.activations.extract import extract_activations
from refusal_core.categories.conditions import GOAL, fired_matrix
from refusal_core.categories.fit import CategoryFit, fit_categories
from refusal_core.categories.settings import CategoriesSettings
from refusal_core.damage import judge_by_name
from refusal_core.directions.category import SHARED, category_name
from refusal_core.generation import GenerationSettings, generate_side_by_side
from refusal_core.interventions.spec import Intervention
from refusal_core.judges.columns import column_verdicts
from refusal_core.metrics import kl_divergence
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.loaders import builtin
from refusal_core.prompts.sets import PromptSet

__all__ = ["DEFAULTS", "GOAL", "CategoriesSettings", "categories_report", "selectivity", "test_prompts"]

# The report's defaults the README's figures and the slow test that checks them name, read from
# the settings (where they are declared, with their reasons).
DEFAULTS = {
    name: getattr(CategoriesSettings(), name) for name in ("per_category", "n_harmless", "max_new_tokens", "judge")
}


def test_prompts(per_category: int, n_harmless: int) -> tuple[PromptSet, PromptSet]:
    """The first ``per_category`` harmful test prompts of each category, the first ``n_harmless`` harmless ones."""
    harmful = builtin("harmful", "test")
    taken: dict[str, int] = {}
    keep = []
    for index, category in enumerate(harmful.categories):
        if taken.get(category, 0) < per_category:
            taken[category] = taken.get(category, 0) + 1
            keep.append(index)
    return harmful.subset(keep, name=f"{harmful.name}[{per_category}/category]"), builtin("harmless", "test").head(
        n_harmless
    )


def _rates_by_category(flags: Sequence[bool], categories: tuple, order: list[str]) -> list[float]:
    return [
        sum(r for r, c in zip(flags, categories) if c == category) / max(1, categories.count(category))
        for category in order
    ]


def _share(flags: Sequence[bool]) -> float:
    return sum(flags) / max(1, len(flags))


def selectivity(row: list[float], own: int, harmless: float) -> dict:
    """Own refusal, the others' mean and minimum, and whether the goal is met."""
    others = [value for j, value in enumerate(row) if j != own]
    result = {
        "own": row[own],
        "others_mean": sum(others) / len(others),
        "others_min": min(others),
        "harmless": harmless,
    }
    result["meets_goal"] = (
        result["own"] <= GOAL["own"] and result["others_min"] >= GOAL["others"] and harmless <= GOAL["harmless"]
    )
    return result


def _block(
    labels: dict[str, list[str]],
    picks: dict[str, Callable[[int], str]],
    harmful: PromptSet,
    order: list[str],
    kl: list[float],
) -> dict:
    """One matrix: row per switched-off category, each prompt's verdict read from the column ``picks[i](p)``."""
    n = len(harmful)
    rows = {c: [labels[pick(p)][p] for p in range(len(labels["baseline"]))] for c, pick in picks.items()}
    matrix = [
        _rates_by_category([label == "refused" for label in rows[c][:n]], harmful.categories, order) for c in order
    ]
    harmless = [_share([label == "refused" for label in rows[c][n:]]) for c in order]
    return {
        "matrix": matrix,
        "harmless": harmless,
        "kl": kl,
        "deflected_harmful": [_share([label == "deflected" for label in rows[c][:n]]) for c in order],
        "deflected_harmless": [_share([label == "deflected" for label in rows[c][n:]]) for c in order],
        "broken_harmful": [_share([label == "broken" for label in rows[c][:n]]) for c in order],
        "broken_harmless": [_share([label == "broken" for label in rows[c][n:]]) for c in order],
        "selectivity": [selectivity(row, i, h) for i, (row, h) in enumerate(zip(matrix, harmless))],
    }


def _summary(labels: list[str], harmful: PromptSet, order: list[str]) -> dict:
    n = len(harmful)
    return {
        "by_category": _rates_by_category([label == "refused" for label in labels[:n]], harmful.categories, order),
        "harmless": _share([label == "refused" for label in labels[n:]]),
        "deflected_harmful": _share([label == "deflected" for label in labels[:n]]),
        "deflected_harmless": _share([label == "deflected" for label in labels[n:]]),
        "broken_harmful": _share([label == "broken" for label in labels[:n]]),
        "broken_harmless": _share([label == "broken" for label in labels[n:]]),
    }


def categories_report(
    loaded: LoadedModel,
    settings: CategoriesSettings | None = None,
    say: Callable[[str], None] = lambda message: None,
    progress=None,
    **changes,
) -> dict:
    """Both matrices, harmless refusal, broken shares and KL per row, and per-category selectivity; JSON-ready.

    ``settings`` (default: ``CategoriesSettings()``) with ``changes`` (its field names) applied.
    ``judge``: ``panel`` counts broken replies apart; ``substring`` reads the refusal phrases
    alone. ``condition_layer``, ``shrinkage``, ``margin`` (None: chosen on val) and
    ``condition_kind`` are passed to ``fit_categories``.
    """
    started = time.perf_counter()
    chosen = dataclasses.replace(settings or CategoriesSettings(), **changes)
    condition_layer, part, per_category, n_harmless = (
        chosen.condition_layer,
        chosen.part,
        chosen.per_category,
        chosen.n_harmless,
    )
    max_new_tokens, shrinkage, batch_size, judge = (
        chosen.max_new_tokens,
        chosen.shrinkage,
        chosen.batch_size,
        chosen.judge,
    )
    max_train_prompts, condition_kind, margin = chosen.max_train_prompts, chosen.condition_kind, chosen.margin
    layer = round(0.75 * loaded.n_layers) if chosen.layer is None else chosen.layer
    judging = judge_by_name(judge)
    say(
        f"Category directions at layer {layer}; {condition_kind} conditions, "
        + (
            "layer, shrinkage and margin chosen on val"
            if condition_layer is None
            else f"at layer {condition_layer}, fitted on val"
        )
    )
    fitted = fit_categories(
        loaded, layer, condition_layer, shrinkage, max_prompts=max_train_prompts, kind=condition_kind, margin=margin
    )
    order = fitted.categories
    harmful, harmless = test_prompts(per_category, n_harmless)
    instructions = list(harmful.instructions) + list(harmless.instructions)
    n = len(harmful)
    variants = [Intervention(), Intervention.from_directions("shared", fitted.directions, [SHARED])]
    variants += [Intervention.from_directions(c, fitted.directions, [category_name(c, part)]) for c in order]
    say(f"Generating {len(instructions)} prompts x {len(variants)} columns ({max_new_tokens} tokens)")
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    firsts: dict[str, torch.Tensor] = {}
    columns = generate_side_by_side(loaded, instructions, variants, settings, progress=progress, first_logprobs=firsts)
    say(f"Judging {len(columns)} columns ({judge} judge), first-token KL on {len(harmless)} harmless prompts")
    kl = {variant.name: kl_divergence(firsts["baseline"][n:], firsts[variant.name][n:]) for variant in variants}
    labels = _labels(
        judging,
        loaded,
        instructions,
        {name: [c.text for c in replies] for name, replies in columns.items()},
        firsts,
        {variant.name: variant for variant in variants},
    )
    fired = _fired(loaded, fitted, harmful, harmless)
    ablation = _block(
        labels, {c: (lambda p, c=c: c) for c in order}, harmful, order, [float(kl[c].mean()) for c in order]
    )
    conditional_kl = [
        float(sum(kl["shared"][p] for p in range(len(harmless)) if fired[c][n + p]) / len(harmless)) for c in order
    ]
    conditional = _block(
        labels,
        {c: (lambda p, c=c: "shared" if fired[c][p] else "baseline") for c in order},
        harmful,
        order,
        conditional_kl,
    )
    conditional.update(
        val_accuracy=[fitted.val_accuracy[c] for c in order],
        fired_own=[_share([f for f, cat in zip(fired[c][:n], harmful.categories) if cat == c]) for c in order],
        fired_harmless=[_share(fired[c][n:]) for c in order],
    )
    report = {
        "model": loaded.spec,
        "layer": layer,
        "condition_layer": fitted.condition_layer,
        "part": part,
        "categories": order,
        "conditions": {
            "kind": fitted.condition_kind,
            "layer": fitted.condition_layer,
            "shrinkage": fitted.shrinkage,
            "margin": fitted.margin,
            "val_goal": list(fitted.val_goal),
            "scan": list(fitted.scan),
        },
        "n_test": {"per_category": per_category, "harmful": n, "harmless": len(harmless)},
        "max_new_tokens": max_new_tokens,
        "judge": judge,
        "baseline": _summary(labels["baseline"], harmful, order),
        "shared": {**_summary(labels["shared"], harmful, order), "kl": float(kl["shared"].mean())},
        "ablation": ablation,
        "conditional": conditional,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if judge == "substring":  # the phrase judge gives no broken verdict: say "not judged", not 0%
        for block in (report["baseline"], report["shared"], ablation, conditional):
            block.update(broken_harmful=None, broken_harmless=None)
    return report


def _labels(
    judging,
    loaded: LoadedModel,
    instructions: list[str],
    replies: dict[str, list[str]],
    firsts: dict[str, torch.Tensor],
    variants: dict[str, Intervention],
) -> dict[str, list[str]]:
    """Each column's verdict labels (``judges.columns``: fluency once per distinct reply, refusal
    scores from each column's first generation step)."""
    verdicts = column_verdicts(judging, loaded, instructions, replies, firsts, variants)
    return {name: [v.label for v in column] for name, column in verdicts.items()}


def _fired(loaded: LoadedModel, fitted: CategoryFit, harmful: PromptSet, harmless: PromptSet) -> dict[str, list[bool]]:
    """Per category, whether each test prompt (harmful, then harmless) fires its condition."""
    points = torch.cat(
        [extract_activations(loaded, s.instructions).residual(fitted.condition_layer) for s in (harmful, harmless)]
    )
    fired = fired_matrix(fitted.conditions, points)
    return {category: fired[:, k].tolist() for k, category in enumerate(fitted.conditions)}
