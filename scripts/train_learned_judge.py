"""Train the learned judge on the two-reader labelled set and print its accuracy tables.

Prints, for the labelled rows: the learned judge in distribution (5 folds split by prompt) and
leave one intervention out (LOIO), with the fluency check deciding broken (as with ``--model``)
and text-only; the old three-verdict panel on the same rows; examples of LOIO mistakes. Then
fits on every row and writes the shipped model (``--out``).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/train_learned_judge.py [--labelled PATH] [--out PATH] [--c 0.05]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.judges.broken import fluency_stats  # noqa: E402
from refusal_core.judges.features import pair_features  # noqa: E402
from refusal_core.judges.learned import broken_call  # noqa: E402
from refusal_core.judges.reference import reference_verdicts, shipped_thresholds_by_model  # noqa: E402
from refusal_core.judges.training import (  # noqa: E402
    DEFAULT_C,
    EMBEDDINGS_FILE,
    StoredEmbeddings,
    evaluate,
    fit_linear,
    per_verdict_table,
    save_embeddings,
)

DATA = Path(__file__).resolve().parent.parent / "refusal_core" / "data"


def group_of(row: dict) -> str:
    return f"{row['model'].split(':')[-1]}/{row.get('intervention') or row.get('variant')}"


def broken_flags(rows: list[dict], with_model: bool = True) -> list[bool | None]:
    """The judge's broken calls (learned.broken_call): with the model's fluency check from the
    stored likelihoods and the model's shipped thresholds, or text only."""
    if not with_model:
        return [broken_call(r["reply"])[0] for r in rows]
    thresholds = shipped_thresholds_by_model()
    stats = fluency_stats(
        None, [r["instruction"] for r in rows], [r["reply"] for r in rows], logprobs=[r.get("logprob") for r in rows]
    )
    return [broken_call(r["reply"], s, thresholds[r["model"]])[0] for s, r in zip(stats, rows)]


def _scores(truth: list[str], said: list[str], index: list[int]) -> list[str]:
    """All verdicts, complied or not, broken recall and broken false alarms over ``index``, as cells."""
    right = sum(said[i] == truth[i] for i in index)
    complied = sum((said[i] == "complied") == (truth[i] == "complied") for i in index)
    broken = [i for i in index if truth[i] == "broken"]
    fluent = [i for i in index if truth[i] != "broken"]
    caught = sum(said[i] == "broken" for i in broken)
    alarms = sum(said[i] == "broken" for i in fluent)
    share = lambda k, n: f"{k / n:.1%} ({k}/{n})" if n else "n/a"  # noqa: E731
    return [
        share(right, len(index)),
        share(complied, len(index)),
        share(caught, len(broken)),
        share(alarms, len(fluent)),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labelled", type=Path, default=DATA / "judge_labelled.jsonl")
    parser.add_argument("--label-field", default="label")
    parser.add_argument("--out", type=Path, default=DATA / "learned_judge.json")
    parser.add_argument(
        "--c",
        type=float,
        nargs="+",
        default=[DEFAULT_C],
        help="regularisation strengths to compare (LOIO); the first is shipped",
    )
    parser.add_argument("--examples", type=int, default=3)
    parser.add_argument(
        "--fit-only", action="store_true", help="skip the evaluations: fit on every row and write --out"
    )
    parser.add_argument(
        "--embeddings",
        type=Path,
        default=DATA / EMBEDDINGS_FILE,
        help="stored encoder embeddings of the set's texts (made here if missing)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    rows = [json.loads(line) for line in args.labelled.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get(args.label_field)]
    labels = [r[args.label_field] for r in rows]
    groups = [group_of(r) for r in rows]
    instructions = [r["instruction"] for r in rows]
    print(f"{len(rows)} labelled rows, {len(set(groups))} interventions; verdicts {dict(Counter(labels))}")
    if not args.embeddings.is_file():
        save_embeddings(args.embeddings, [*instructions, *(r["reply"] for r in rows)])
        print(f"embedded the distinct texts into {args.embeddings} in {time.perf_counter() - started:.0f} s")
    embed = StoredEmbeddings(args.embeddings)
    features = pair_features(instructions, [r["reply"] for r in rows], embed).numpy()
    print(f"{embed.missed} texts were not in the stored embeddings")
    print(f"features {features.shape} in {time.perf_counter() - started:.0f} s")
    if args.fit_only:
        model = fit_linear(
            features,
            labels,
            args.c[0],
            {
                "trained_on": str(args.labelled.name),
                "rows": len(rows),
                "label_field": args.label_field,
                "C": args.c[0],
                "features": "judges.features.pair_features",
                "script": "scripts/train_learned_judge.py",
            },
        )
        args.out.write_text(model.to_json())
        print(f"Wrote {args.out}")
        return
    with_model = broken_flags(rows)
    text_only = broken_flags(rows, with_model=False)
    shipped = None  # the evaluations of the shipped C (the first), for the tables below
    for c in args.c:
        inside, loio = evaluate(features, labels, groups, instructions, with_model, c)
        shipped = shipped or (inside, loio)
        print(f"\n## C={c}: with the fluency check deciding broken (judge --model)\n")
        print(per_verdict_table([inside, loio]))
        inside_t, loio_t = evaluate(features, labels, groups, instructions, text_only, c)
        print(f"\n## C={c}: text only (judge without --model)\n")
        print(per_verdict_table([inside_t, loio_t]))
    inside, loio = shipped
    print(f"\n## LOIO per intervention (with the fluency check, C={args.c[0]})\n")
    print("| intervention | replies | verdicts (readers) | LOIO accuracy | complied or not |")
    print("|---|---|---|---|---|")
    for group in dict.fromkeys(groups):
        index = [i for i, g in enumerate(groups) if g == group]
        mix = ", ".join(f"{k} {v}" for k, v in Counter(labels[i] for i in index).most_common())
        acc = np.mean([loio.predicted[i] == labels[i] for i in index])
        con = np.mean([(loio.predicted[i] == "complied") == (labels[i] == "complied") for i in index])
        print(f"| {group} | {len(index)} | {mix} | {acc:.1%} | {con:.1%} |")
    panel = [v.label for v in reference_verdicts([{**r, "refusal_score": r.get("refusal_score")} for r in rows])]
    print("\n## The panel (three verdicts) against the learned judge's LOIO, on the same rows\n")
    print(
        "The panel is not fitted to this set, but its semantic member was trained on the earlier reference "
        "replies (rows with source judge_reference.jsonl), so its figure on those rows is in-sample.\n"
    )
    print("| rows | judge | all verdicts | complied or not | broken recall | broken false alarms |")
    print("|---|---|---|---|---|---|")
    fresh = [i for i, r in enumerate(rows) if not r.get("source")]
    for name, index in (("all", list(range(len(rows)))), ("not in the reference set", fresh)):
        for judge, said in (("panel", panel), ("learned, LOIO", list(loio.predicted))):
            print(f"| {name} ({len(index)}) | {judge} | " + " | ".join(_scores(labels, said, index)) + " |")
    print("\n## Examples of LOIO mistakes\n")
    mistakes = Counter((t, p) for t, p in zip(labels, loio.predicted) if t != p)
    for (truth, said), count in mistakes.most_common(6):
        print(f"- readers {truth}, judge {said} ({count} replies):")
        shown = [i for i in range(len(rows)) if labels[i] == truth and loio.predicted[i] == said][: args.examples]
        for i in shown:
            print(f"  - [{groups[i]}] {instructions[i][:90]!r} -> {rows[i]['reply'][:160]!r}")
    model = fit_linear(
        features,
        labels,
        args.c[0],
        {
            "trained_on": str(args.labelled.name),
            "rows": len(rows),
            "label_field": args.label_field,
            "C": args.c[0],
            "features": "judges.features.pair_features",
            "script": "scripts/train_learned_judge.py",
            "loio_accuracy": round(loio.accuracy(), 4),
            "in_distribution_accuracy": round(inside.accuracy(), 4),
        },
    )
    args.out.write_text(model.to_json())
    print(f"\nWrote {args.out} ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
