"""Print each judge's accuracy on the labelled reference set (the README's table).

Uses the features stored per reply (first-token refusal log-odds, reply log-likelihood under
the unmodified model) and the shipped broken thresholds and semantic classifier; no chat model
is loaded. tests/unit/test_judges.py computes the same table and holds it to the goals.

    .venv/bin/python scripts/judge_accuracy.py
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.judges.reference import accuracy_table, format_table, load_reference  # noqa: E402


def main() -> None:
    rows = load_reference()
    counts = Counter((row["model"].split(":")[-1], row["label"]) for row in rows)
    print(
        f"{len(rows)} labelled replies: "
        + ", ".join(f"{model} {label} {n}" for (model, label), n in sorted(counts.items()))
    )
    print(format_table(accuracy_table(rows)))


if __name__ == "__main__":
    main()
