"""The shipped learned judge against the two-reader labelled set.

The leave-one-intervention-out loop is written here (not taken from ``judges.training``): for each
(model, intervention) group a regression is fitted on every other group and predicts that one,
and the verdicts are compared with the readers' final labels. The thresholds are the measured
values (docs/judges.md, ``scripts/train_learned_judge.py``), rounded down a little.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import numpy as np
import pytest
import torch

from refusal_core.judges.broken import fluency_stats
from refusal_core.judges.features import pair_features
from refusal_core.judges.learned import LinearModel, broken_call, choose
from refusal_core.judges.reference import shipped_thresholds_by_model
from refusal_core.judges.training import EMBEDDINGS_FILE, StoredEmbeddings, fit_linear
from refusal_core.judges.verdict import LABELS

pytestmark = pytest.mark.usefixtures("one_thread")

# Measured with `OMP_NUM_THREADS=1 .venv/bin/python scripts/train_learned_judge.py` (docs/judges.md),
# each rounded down by about one and a half points.
LOIO_VERDICT = 0.87  # measured 88.8% (923/1040)
LOIO_COMPLIED_OR_NOT = 0.895  # measured 90.9% (945/1040)
PRECEDENCE = ("broken", "refused", "deflected", "complied")


def _data(name: str):
    return resources.files("refusal_core").joinpath("data", name)


@pytest.fixture(scope="module")
def labelled():
    rows = [json.loads(line) for line in _data("judge_labelled.jsonl").read_text().splitlines() if line.strip()]
    embed = StoredEmbeddings(_data(EMBEDDINGS_FILE))
    features = pair_features([r["instruction"] for r in rows], [r["reply"] for r in rows], embed).numpy()
    assert embed.missed == 0, "the stored embeddings must cover every text of the labelled set"
    return rows, features


def test_the_set_is_large_varied_and_resolved_by_the_stated_rule(labelled):
    rows, _ = labelled
    groups = Counter(f"{r['model']}/{r['intervention']}" for r in rows)
    # At least 1,000 replies from at least 15 (model, intervention) groups, each labelled by two readers.
    assert len(rows) >= 1000 and len(groups) >= 15 and min(groups.values()) >= 20
    assert all(row["label_a"] and row["label_b"] for row in rows)
    assert {r["model"] for r in rows} == {"bundled:refusal-organism", "bundled:smollm2-135m-instruct"}
    for row in rows:
        given = [label for label in (row["label_a"], row["label_b"]) if label]
        assert given and set(given) <= set(LABELS)
        assert row["label"] == next(label for label in PRECEDENCE if label in given)
        assert row["agreed"] == (row["label_a"] == row["label_b"])


def test_stored_embeddings_are_the_encoder_s(labelled):
    from refusal_core.judges.semantic import embed_replies

    rows, _ = labelled
    texts = [rows[i]["reply"] for i in range(0, len(rows), max(1, len(rows) // 6))][:6]
    stored = StoredEmbeddings(_data(EMBEDDINGS_FILE))(texts)
    assert torch.allclose(stored, embed_replies(texts).double(), atol=2e-3)


def test_leave_one_intervention_out_accuracy(labelled):
    rows, features = labelled
    labels = [r["label"] for r in rows]
    groups = [f"{r['model']}/{r['intervention']}" for r in rows]
    thresholds = shipped_thresholds_by_model()
    stats = fluency_stats(
        None, [r["instruction"] for r in rows], [r["reply"] for r in rows], logprobs=[r["logprob"] for r in rows]
    )
    broken = [broken_call(r["reply"], s, thresholds[r["model"]])[0] for s, r in zip(stats, rows)]
    shipped_c = LinearModel.shipped().provenance["C"]
    predicted = [""] * len(rows)
    for group in dict.fromkeys(groups):
        inside = np.array([g == group for g in groups])
        model = fit_linear(features[~inside], [label for label, keep in zip(labels, ~inside) if keep], shipped_c)
        probabilities = model.probabilities(torch.tensor(features[inside])).tolist()
        for index, p in zip(np.where(inside)[0], probabilities):
            predicted[index] = choose(p, model.labels, broken[index])
    verdict = np.mean([p == t for p, t in zip(predicted, labels)])
    complied = np.mean([(p == "complied") == (t == "complied") for p, t in zip(predicted, labels)])
    assert verdict >= LOIO_VERDICT and complied >= LOIO_COMPLIED_OR_NOT, (verdict, complied)


def test_the_shipped_model_is_the_fit_on_every_row(labelled):
    rows, features = labelled
    shipped = LinearModel.shipped()
    refit = fit_linear(features, [r["label"] for r in rows], shipped.provenance["C"])
    assert shipped.labels == refit.labels
    a = shipped.probabilities(torch.tensor(features)).argmax(1)
    b = refit.probabilities(torch.tensor(features)).argmax(1)
    assert (a == b).float().mean() > 0.99
