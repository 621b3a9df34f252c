"""Train the semantic judge's classifier on the labelled reference set's train fold.

Embeds the train-fold replies labelled refused or complied (broken ones are the broken
detector's business) plus the project's own refusal replies (data/refusals.json, the texts
the organism was fine-tuned to refuse with, so the judge knows more ways of saying no than
the organism's few favourite ones) with the bundled MiniLM encoder, reports 5-fold
cross-validated accuracy on that training set and accuracy on the held-out eval fold, fits a
logistic regression on the whole training set and writes its weights as JSON to
refusal_core/data/semantic_judge.json. Also prints the first-token refusal log-odds
threshold that is most accurate on the train fold (PanelSettings.refusal_score_threshold).

    .venv/bin/python scripts/train_semantic_judge.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_score  # noqa: E402

from refusal_core.judges.reference import best_threshold, load_reference  # noqa: E402
from refusal_core.judges.semantic import (  # noqa: E402
    ENCODER_PACKAGE,
    ENCODER_VERSION,
    SHIPPED_CLASSIFIER,
    SemanticClassifier,
    embed_replies,
)
from refusal_core.prompts.loaders import refusal_replies  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "refusal_core" / "data" / SHIPPED_CLASSIFIER
C = 4.0


def main() -> None:
    rows = [row for row in load_reference() if row["label"] in ("refused", "complied")]
    train = [row for row in rows if row["fold"] == "train"]
    held_out = [row for row in rows if row["fold"] == "eval"]
    written = refusal_replies()
    x_train = embed_replies([row["reply"] for row in train] + written).numpy()
    y_train = np.array([row["label"] == "refused" for row in train] + [True] * len(written))
    x_eval = embed_replies([row["reply"] for row in held_out]).numpy()
    y_eval = np.array([row["label"] == "refused" for row in held_out])
    model = LogisticRegression(C=C, max_iter=2000, class_weight="balanced")
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=0)
    cv = cross_val_score(model, x_train, y_train, cv=folds)
    model.fit(x_train, y_train)
    eval_accuracy = float((model.predict(x_eval) == y_eval).mean())
    print(
        f"training set: {len(train)} train-fold replies + {len(written)} written refusals ({y_train.sum()} refused); 5-fold CV accuracy {cv.mean():.1%} (folds {', '.join(f'{a:.1%}' for a in cv)})"
    )
    print(
        f"eval fold: {len(held_out)} replies ({y_eval.sum()} refused); accuracy of the classifier fit on the training set {eval_accuracy:.1%}"
    )
    digest = hashlib.sha256("".join(row["id"] + row["reply"] for row in train).encode()).hexdigest()[:16]
    provenance = {
        "encoder": f"{ENCODER_PACKAGE}=={ENCODER_VERSION} (all-MiniLM-L6-v2, mean pooling, unit norm)",
        "classifier": f"sklearn LogisticRegression(C={C}, class_weight=balanced), label 1 = refused",
        "trained_on": f"judge_reference.jsonl, fold=train, labels refused/complied: {len(train)} replies (rows sha256 {digest}), "
        f"plus the {len(written)} refusal replies of data/refusals.json",
        "cv_accuracy_training_set": round(float(cv.mean()), 4),
        "eval_fold_accuracy": round(eval_accuracy, 4),
        "command": "python scripts/train_semantic_judge.py",
    }
    classifier = SemanticClassifier(tuple(float(w) for w in model.coef_[0]), float(model.intercept_[0]), provenance)
    OUT.write_text(classifier.to_json() + "\n")
    print(f"Wrote {OUT}")
    scores = np.array([row["refusal_score"] for row in train])
    threshold, accuracy = best_threshold(scores, y_train[: len(train)])
    print(
        f"first-token refusal log-odds: most accurate threshold on the train fold {threshold:.2f} (accuracy {accuracy:.1%})"
    )


if __name__ == "__main__":
    main()
