"""``judge --replies FILE``: verdicts for replies from any source (another tool's outputs, a
labelled set), per reply and summarised; with labels in the file, the agreement with them.
"""

from __future__ import annotations

import json

from refusal_core.cli.common import CliError, judge_choices, judge_help
from refusal_core.judges.verdict import LABELS

# Replies from a file come without their intervention: the default judge reads text (and the model, if given) only.
REPLIES_JUDGE = "learned"


def cmd_judge(args) -> None:
    from refusal_core.judges.registry import build_judge, get_judge
    from refusal_core.judges.replies_file import agreement, read_replies
    from refusal_core.judges.verdict import verdict_rates

    entry = get_judge(args.judge)
    if entry.needs_model and not args.model:
        raise CliError(
            f"Judge {args.judge!r} needs the model that wrote the replies; pass --model SPEC "
            f"(e.g. bundled:refusal-organism) or use --judge {REPLIES_JUDGE}."
        )
    rows = read_replies(args.replies)
    judge = build_judge(args.judge)
    loaded = None
    if args.model:
        from refusal_core.model.loading import load_model

        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
    instructions, replies = [r.instruction for r in rows], [r.reply for r in rows]
    verdicts = judge.verdicts(loaded, instructions, replies)
    rates = verdict_rates(verdicts)
    labelled = [r.label for r in rows]
    scored = agreement(labelled, verdicts) if all(label is not None for label in labelled) else None
    if args.json:
        for row, verdict in zip(rows, verdicts):
            print(
                json.dumps(
                    {
                        "id": row.id,
                        "instruction": row.instruction,
                        "reply": row.reply,
                        **({"given_label": row.label} if row.label else {}),
                        **verdict.as_dict(),
                    }
                )
            )
        print(
            json.dumps(
                {
                    "summary": {label: rates[label] for label in LABELS},
                    "n": rates["n"],
                    "judge": args.judge,
                    "model": args.model,
                    "agreement": scored,
                }
            )
        )
        return
    for row, verdict in zip(rows, verdicts):
        given = f" (given {row.label})" if row.label else ""
        print(f"[{row.id}] {verdict.label.upper()}{given} | {row.instruction}\n    {row.reply.strip()[:300]}\n")
    print(
        f"{rates['n']} replies, judge {args.judge}"
        + (f", model {args.model}" if args.model else ", no model (text only)")
        + ": "
        + ", ".join(f"{label} {rates[label]:.1%}" for label in LABELS)
    )
    if scored:
        print(
            f"Agreement with the file's labels: verdict {scored['verdict']:.1%}, complied-or-not {scored['complied_or_not']:.1%}, "
            f"broken false alarms {scored['broken_false_alarms'] or 0:.1%}"
        )
        for label, info in scored["per_verdict"].items():
            if info["n"]:
                print(f"  {label:9s} recall {info['recall']:.1%} of {info['n']}")


def add_parsers(sub) -> None:
    """``judge``."""
    cmd = sub.add_parser(
        "judge", help="judge replies from any source: a JSONL or CSV file with instruction and reply fields"
    )
    cmd.add_argument(
        "--replies",
        required=True,
        help="JSONL (one object a line) or CSV (header row) with instruction and reply "
        "fields; optional id and label (a verdict: the agreement is printed)",
    )
    cmd.add_argument(
        "--model",
        default=None,
        help="the model that wrote the replies: its likelihood of each reply decides broken "
        "(default: none, the judge reads text only)",
    )
    cmd.add_argument("--device", default=None, help="cpu (default), cuda, mps ...")
    cmd.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16 or auto")
    cmd.add_argument("--judge", choices=judge_choices(), default=REPLIES_JUDGE, help=judge_help(REPLIES_JUDGE))
    cmd.add_argument("--json", action="store_true", help="one JSON object per reply, then the summary")
    cmd.set_defaults(func=cmd_judge)
