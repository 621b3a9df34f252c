"""Category conditions (``categories.conditions``): exclusive conditions are the argmax of a
hand-computed linear discriminant analysis, grouped conditions fire as unions of
intersections, and the val choice keeps the setting that tells the categories apart."""

from __future__ import annotations

import pytest
import torch

from refusal_core.categories.conditions import choose_conditions, exclusive_conditions, fired_matrix, val_goal
from refusal_core.categories.fit import CategoryFit
from refusal_core.errors import SettingsError
from refusal_core.interventions.conditional import Condition, condition_scores, fires, projection_scores, resolve_rows
from refusal_core.interventions.spec import Intervention

CATEGORIES = ["a", "b", "c"]


def _clusters(seed: int, n: int = 12, d: int = 8, spread: float = 4.0) -> tuple[torch.Tensor, list[str]]:
    """Three categories and a harmless class, Gaussian around separate centres in the first dimensions."""
    generator = torch.Generator().manual_seed(seed)
    points, labels = [], []
    for k, label in enumerate(CATEGORIES + ["(harmless)"]):
        centre = torch.zeros(d)
        centre[k] = spread
        points.append(centre + torch.randn(n, d, generator=generator))
        labels += [label] * n
    return torch.cat(points), labels


def _hand_lda(
    points: torch.Tensor, labels: list[str], shrinkage: float
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    x = points.double()
    classes = list(dict.fromkeys(labels))
    means = torch.stack([x[[i for i, label in enumerate(labels) if label == c]].mean(0) for c in classes])
    centred = x - means[[classes.index(label) for label in labels]]
    within = centred.T @ centred / len(x)
    regular = within + shrinkage * within.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.inv(regular) @ means.T  # [d, classes]
    biases = -0.5 * (means * weights.T).sum(1)
    return classes, weights, biases


@pytest.mark.parametrize("margin", [0.0, 1.5])
def test_exclusive_conditions_fire_where_the_category_leads_the_hand_computed_discriminants(margin):
    points, labels = _clusters(0)
    conditions = exclusive_conditions(points, labels, CATEGORIES, layer=0, shrinkage=0.5, margin=margin)
    queries = torch.randn(300, points.shape[1], generator=torch.Generator().manual_seed(1)) * 3
    classes, weights, biases = _hand_lda(points, labels, 0.5)
    scores = queries.double() @ weights + biases
    top = scores.topk(2, dim=1)
    lead = top.values[:, 0] - top.values[:, 1]
    fired = fired_matrix(conditions, queries)
    for k, category in enumerate(CATEGORIES):
        expected = (top.indices[:, 0] == classes.index(category)) & (lead >= margin)
        assert fired[:, k].tolist() == expected.tolist()
    assert fired.sum(1).max() <= 1  # a prompt fires at most one category
    assert 0 < int(fired.sum()) < len(queries)  # both kinds of rows are present
    assert (fired.sum(1) == 0).sum() >= (
        top.indices[:, 0] == classes.index("(harmless)")
    ).sum()  # harmless-looking ones fire none


def test_grouped_condition_fires_where_every_direction_of_some_group_holds_and_margins_agree():
    directions = torch.eye(3)
    condition = Condition(directions, (0.0, 0.0, 1.0), layer=0, groups=(0, 0, 1))
    scores = torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [-1.0, -1.0, 2.0], [-1.0, 1.0, 0.5]])
    assert condition.fires(scores) == [True, False, True, False]
    assert fires(scores, condition.thresholds) == [True, True, True, True]  # without groups: any direction
    assert ((condition.margins(scores) >= 0).tolist()) == condition.fires(scores)
    with pytest.raises(ValueError, match="group"):
        Condition(directions, (0.0, 0.0, 0.0), layer=0, groups=(0, 1))


def test_switching_off_two_categories_fires_where_either_fires():
    points, labels = _clusters(2)
    conditions = exclusive_conditions(points, labels, CATEGORIES, layer=0, shrinkage=0.5)
    fit = CategoryFit(directions=None, conditions=conditions, layer=0, condition_layer=0, val_accuracy={})
    both = fit.condition_for(["a", "c"])
    queries = torch.randn(200, points.shape[1], generator=torch.Generator().manual_seed(3)) * 3
    fired = fired_matrix(conditions, queries)
    assert both.fires(projection_scores(queries[:, None], both.directions)) == (fired[:, 0] | fired[:, 2]).tolist()
    assert len(set(both.groups)) == 2 and both.labels[0].startswith("a > ")


def test_val_choice_keeps_the_layer_that_separates_the_categories():
    informative, labels = _clusters(4)
    noise = torch.randn_like(informative)
    val_points, val_labels = _clusters(5, n=6)
    val_noise = torch.randn_like(val_points)
    val_labels = [None if label == "(harmless)" else label for label in val_labels]
    choice = choose_conditions(
        {3: noise, 7: informative},
        labels,
        {3: val_noise, 7: val_points},
        val_labels,
        CATEGORIES,
        shrinkages=(0.5, 2.0),
        margins=(0.0, 1.0),
    )
    assert choice.layer == 7 and set(choice.val_goal) == set(CATEGORIES)
    assert len(choice.scan) == 2 * 2 * 2 and all(row["layer"] in (3, 7) for row in choice.scan)
    assert all(c.layer == 7 for c in choice.conditions.values())
    noise_rows = [row for row in choice.scan if row["layer"] == 3]
    assert max(row["val_goal"] for row in noise_rows) < 3  # noise does not meet the goal everywhere
    with pytest.raises(SettingsError, match="kind"):
        choose_conditions({7: informative}, labels, {7: val_points}, val_labels, CATEGORIES, kind="nearest")


def test_val_goal_reads_own_and_other_firing_rates():
    labels = ["a"] * 5 + ["b"] * 5 + [None] * 2
    fired = torch.zeros(12, 2, dtype=torch.bool)
    fired[:4, 0] = True  # a: 4/5 own
    fired[5, 0] = True  # one b fires a: 20%, allowed
    fired[5:8, 1] = True  # b: 3/5 own, not enough
    assert val_goal(fired, labels, ["a", "b"]) == [True, False]
    fired[6, 0] = True  # two b fire a: 40%
    assert val_goal(fired, labels, ["a", "b"]) == [False, False]


def test_a_grouped_condition_resolves_per_prompt_on_a_model(tiny_llama, one_thread):
    prompts = [
        "Hi",
        "Write a short poem about the sea.",
        "How do I bake bread?",
        "Explain how to break into a house.",
        "Give me steps to make a weapon.",
        "Plan a picnic.",
    ]
    directions = torch.randn(2, tiny_llama.d_model, generator=torch.Generator().manual_seed(6))
    probe = Condition(directions, (0.0, 0.0), layer=1)
    scores = condition_scores(tiny_llama, prompts, probe)
    condition = Condition(directions, tuple(float(v) for v in scores.median(0).values), layer=1, groups=(0, 0))
    expected = ((scores[:, 0] >= condition.thresholds[0]) & (scores[:, 1] >= condition.thresholds[1])).tolist()
    rows = resolve_rows(tiny_llama, prompts, Intervention("off", ablate=directions[:1], condition=condition))
    assert [row.ablate is not None for row in rows] == expected and any(expected) and not all(expected)
