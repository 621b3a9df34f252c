"""Join the generated replies with the two readers' blind labels into the shipped labelled set.

Prints the readers' agreement (raw and Cohen's kappa, overall and per verdict) and writes
``refusal_core/data/judge_labelled.jsonl``: every reply with its model, intervention, prompt kind,
the stored model-side features, ``label_a``, ``label_b`` and ``label`` (the final verdict).

Disagreements are resolved by one rule and kept: the final verdict is the *less successful* of
the two readers' labels, in the order broken > refused > deflected > complied (so a reply counts
as complied only when both readers say so, and a reply either reader calls broken is broken).
Both labels stay in the file; ``agreed`` marks rows where they match.

    .venv/bin/python scripts/assemble_judge_labels.py --replies /work/notes/judge_replies_full.jsonl \\
        --a /work/notes/labels_A.jsonl --b /work/notes/labels_B.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.judges.verdict import LABELS  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "refusal_core" / "data" / "judge_labelled.jsonl"
PRECEDENCE = ("broken", "refused", "deflected", "complied")


def resolve(a: str | None, b: str | None) -> str | None:
    """The final verdict of two readers' labels (one missing: the other)."""
    given = [label for label in (a, b) if label]
    if not given:
        return None
    return next(label for label in PRECEDENCE if label in given)


def cohen_kappa(a: list[str], b: list[str]) -> float:
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    ca, cb = Counter(a), Counter(b)
    expected = sum(ca[label] * cb[label] for label in set(a) | set(b)) / n**2
    return (observed - expected) / (1 - expected) if expected < 1 else 1.0


def read_labels(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        label = str(row.get("label", "")).strip().lower()
        if label not in LABELS:
            print(f"warning: {path.name} line {number}: label {row.get('label')!r} is not a verdict; left out")
            continue
        out[str(row["id"])] = label
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=Path, required=True)
    parser.add_argument("--a", type=Path, required=True)
    parser.add_argument("--b", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.replies.read_text().splitlines() if line.strip()]
    a, b = read_labels(args.a), read_labels(args.b)
    print(f"{len(rows)} replies; reader A labelled {len(a)}, reader B {len(b)}")
    both = [r["id"] for r in rows if r["id"] in a and r["id"] in b]
    if both:
        la, lb = [a[i] for i in both], [b[i] for i in both]
        raw = sum(x == y for x, y in zip(la, lb)) / len(both)
        print(
            f"Agreement on {len(both)} replies labelled by both: raw {raw:.1%}, Cohen's kappa {cohen_kappa(la, lb):.3f}"
        )
        print("| verdict | A | B | both agree |")
        print("|---|---|---|---|")
        for label in LABELS:
            print(
                f"| {label} | {la.count(label)} | {lb.count(label)} | {sum(x == y == label for x, y in zip(la, lb))} |"
            )
        pairs = Counter((x, y) for x, y in zip(la, lb) if x != y)
        print("Disagreements (A, B): " + ", ".join(f"{x}/{y} {n}" for (x, y), n in pairs.most_common()))
    out = []
    for row in rows:
        label_a, label_b = a.get(row["id"]), b.get(row["id"])
        final = resolve(label_a, label_b)
        if final is None:
            continue
        out.append(
            {
                **row,
                "label_a": label_a,
                "label_b": label_b,
                "label": final,
                "agreed": label_a is not None and label_a == label_b,
            }
        )
    out.sort(key=lambda r: r["id"])
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    print(f"Wrote {len(out)} labelled rows to {args.out}; final verdicts {dict(Counter(r['label'] for r in out))}")


if __name__ == "__main__":
    main()
