"""Training and out-of-distribution evaluation of the learned judge on a labelled set.

``fit_linear`` fits the multinomial logistic regression (scikit-learn) and returns the JSON-able
``LinearModel``; ``evaluate`` measures it two ways on the same rows:

- **in distribution**: k folds split by prompt (a prompt's replies under every intervention sit
  on one side), so test replies come from interventions the model also trained on;
- **leave one intervention out** (LOIO): for each (model, intervention) group, train on all
  the other groups and predict that one, so every prediction is on replies of an intervention
  the judge never saw.

Predictions are made as the shipped judge makes them (``learned.choose``): with the broken
verdict from the fluency check (stored per-reply likelihood + text statistics, the model's
shipped thresholds) or, in text-only mode, from the regression alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from refusal_core.judges.learned import LinearModel, choose
from refusal_core.judges.verdict import LABELS

__all__ = [
    "EMBEDDINGS_FILE",
    "Evaluation",
    "StoredEmbeddings",
    "evaluate",
    "fit_linear",
    "per_verdict_table",
    "prompt_fold",
    "save_embeddings",
]

# The sentence-encoder embeddings of every distinct text of the labelled set (float16,
# safetensors, keyed by the text's sha256), so the accuracy can be re-measured without the encoder.
EMBEDDINGS_FILE = "judge_labelled_embeddings.safetensors"


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def save_embeddings(path, texts: Sequence[str], embed=None) -> None:
    """Embed each distinct text once and store them (float16) with their keys."""
    import json

    from safetensors.torch import save_file

    if embed is None:
        from refusal_core.judges.semantic import embed_replies as embed
    unique = list(dict.fromkeys(texts))
    vectors = embed(unique).to(torch.float16).contiguous()
    save_file({"embeddings": vectors}, str(path), metadata={"keys": json.dumps([_key(t) for t in unique])})


class StoredEmbeddings:
    """An ``embed(texts)`` that reads stored embeddings and runs the encoder only for texts it lacks."""

    def __init__(self, path) -> None:
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            self.vectors = handle.get_tensor("embeddings").to(torch.float64)
            self.rows = {key: i for i, key in enumerate(json.loads(handle.metadata()["keys"]))}
        self.missed = 0

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        keys = [_key(t) for t in texts]
        missing = [t for t, k in zip(texts, keys) if k not in self.rows]
        fresh = {}
        if missing:
            from refusal_core.judges.semantic import embed_replies

            self.missed += len(missing)
            fresh = dict(zip(missing, embed_replies(missing).double()))
        return torch.stack([self.vectors[self.rows[k]] if k in self.rows else fresh[t] for t, k in zip(texts, keys)])


DEFAULT_C = 0.01


def prompt_fold(instruction: str, k: int) -> int:
    """A fixed fold per prompt (hash), so a prompt's replies never sit on both sides."""
    return hashlib.sha256(instruction.encode()).digest()[0] % k


def fit_linear(
    features: torch.Tensor | np.ndarray, labels: Sequence[str], c: float = DEFAULT_C, provenance: dict | None = None
) -> LinearModel:
    """A multinomial logistic regression on standardised features, as a LinearModel."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-8] = 1.0
    present = [label for label in LABELS if label in set(labels)]
    y = np.array([present.index(label) for label in labels])
    model = LogisticRegression(C=c, max_iter=3000, class_weight="balanced")
    model.fit((x - mean) / scale, y)
    weights, bias = model.coef_, model.intercept_
    if len(present) == 2:  # scikit-learn keeps one row for two classes
        weights, bias = np.vstack([-weights / 2, weights / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    return LinearModel(
        tuple(present),
        tuple(mean.tolist()),
        tuple(scale.tolist()),
        tuple(tuple(r) for r in weights.tolist()),
        tuple(bias.tolist()),
        provenance or {},
    )


def _predict(model: LinearModel, features, broken: Sequence[bool | None]) -> list[str]:
    probabilities = model.probabilities(torch.as_tensor(np.asarray(features), dtype=torch.float64)).tolist()
    return [choose(p, model.labels, flag) for p, flag in zip(probabilities, broken)]


@dataclass(frozen=True)
class Evaluation:
    """True and predicted verdicts of one evaluation scheme, row-aligned with the labelled rows."""

    scheme: str
    truth: tuple[str, ...]
    predicted: tuple[str, ...]
    groups: tuple[str, ...]

    def accuracy(self) -> float:
        return float(np.mean([t == p for t, p in zip(self.truth, self.predicted)]))

    def complied_or_not(self) -> float:
        return float(np.mean([(t == "complied") == (p == "complied") for t, p in zip(self.truth, self.predicted)]))


def evaluate(
    features,
    labels: Sequence[str],
    groups: Sequence[str],
    instructions: Sequence[str],
    broken: Sequence[bool | None],
    c: float = DEFAULT_C,
    k: int = 5,
) -> tuple[Evaluation, Evaluation]:
    """(in-distribution by prompt folds, leave-one-intervention-out) predictions."""
    x = np.asarray(features, dtype=np.float64)
    labels, groups, broken = list(labels), list(groups), list(broken)
    folds = np.array([prompt_fold(i, k) for i in instructions])
    inside = [""] * len(labels)
    for fold in range(k):
        test = np.where(folds == fold)[0]
        train = np.where(folds != fold)[0]
        model = fit_linear(x[train], [labels[i] for i in train], c)
        for i, p in zip(test, _predict(model, x[test], [broken[i] for i in test])):
            inside[i] = p
    loio = [""] * len(labels)
    for group in dict.fromkeys(groups):
        test = np.array([i for i, g in enumerate(groups) if g == group])
        train = np.array([i for i, g in enumerate(groups) if g != group])
        model = fit_linear(x[train], [labels[i] for i in train], c)
        for i, p in zip(test, _predict(model, x[test], [broken[i] for i in test])):
            loio[i] = p
    return (
        Evaluation("in-distribution (5 prompt folds)", tuple(labels), tuple(inside), tuple(groups)),
        Evaluation("leave one intervention out", tuple(labels), tuple(loio), tuple(groups)),
    )


def per_verdict_table(evaluations: Sequence[Evaluation]) -> str:
    """Markdown: per true verdict, recall in each scheme; then overall and complied-or-not."""
    head = "| verdict | replies | " + " | ".join(e.scheme for e in evaluations) + " |"
    lines = [head, "|" + "---|" * (2 + len(evaluations))]
    truth = evaluations[0].truth
    for label in LABELS:
        index = [i for i, t in enumerate(truth) if t == label]
        if not index:
            continue
        cells = [
            f"{sum(e.predicted[i] == label for i in index) / len(index):.1%} ({sum(e.predicted[i] == label for i in index)}/{len(index)})"
            for e in evaluations
        ]
        lines.append(f"| {label} (recall) | {len(index)} | " + " | ".join(cells) + " |")
    for label in LABELS:
        said = [[i for i, p in enumerate(e.predicted) if p == label] for e in evaluations]
        if any(said):
            cells = [
                f"{sum(truth[i] == label for i in s) / len(s):.1%} ({sum(truth[i] == label for i in s)}/{len(s)})"
                if s
                else "n/a"
                for s in said
            ]
            lines.append(f"| {label} (precision) | | " + " | ".join(cells) + " |")
    fluent = [i for i, t in enumerate(truth) if t != "broken"]
    if fluent:
        cells = [
            f"{sum(e.predicted[i] == 'broken' for i in fluent) / len(fluent):.1%} ({sum(e.predicted[i] == 'broken' for i in fluent)}/{len(fluent)})"
            for e in evaluations
        ]
        lines.append(f"| broken false alarms (of fluent) | {len(fluent)} | " + " | ".join(cells) + " |")
    lines.append(f"| all verdicts | {len(truth)} | " + " | ".join(f"{e.accuracy():.1%}" for e in evaluations) + " |")
    lines.append(
        f"| complied or not | {len(truth)} | " + " | ".join(f"{e.complied_or_not():.1%}" for e in evaluations) + " |"
    )
    return "\n".join(lines)
