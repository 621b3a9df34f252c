"""The learned four-verdict judge's pace against the panel's, on the same replies, one run.

Cases, each judging the same ``--replies`` replies of the labelled set (64-token greedy replies
of the organism and the base model) with the organism loaded:

- ``panel``: the default three-verdict panel (refusal phrases, first-token refusal score,
  semantic judge, fluency check);
- ``learned``: the learned judge with the fluency check (what the Generate page runs);
- ``learned-text``: the learned judge without the model (``judge --replies`` without ``--model``).

Prints the medians, replies per second of each, and RATIO lines learned / panel. Run from the
repository root: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_judges.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Case, Report, apply_threads, base_parser, interleave  # noqa: E402


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=3)
    parser.add_argument("--replies", type=int, default=64, help="replies judged per call (default: %(default)s)")
    args = parser.parse_args()
    apply_threads(args.threads)
    from refusal_core.judges.registry import build_judge
    from refusal_core.model.loading import load_model

    data = Path(__file__).resolve().parent.parent / "refusal_core" / "data" / "judge_labelled.jsonl"
    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()][: args.replies]
    instructions, replies = [r["instruction"] for r in rows], [r["reply"] for r in rows]
    loaded = load_model(args.model)
    panel, learned = build_judge("panel"), build_judge("learned")
    cases = [
        Case("panel", lambda: panel.verdicts(loaded, instructions, replies)),
        Case("learned", lambda: learned.verdicts(loaded, instructions, replies)),
        Case("learned-text", lambda: learned.verdicts(None, instructions, replies)),
    ]
    timings = interleave(cases, args.repeats)
    report = Report("bench_judges", vars(args))
    report.add_times(timings, per={case.name: len(rows) for case in cases})
    for case in cases:
        seconds = sorted(timings.wall[case.name])[len(timings.wall[case.name]) // 2]
        report.add_value(f"{case.name} replies per second", len(rows) / seconds, "replies/s")
    report.compare("learned / panel", "learned", "panel")
    report.compare("learned-text / panel", "learned-text", "panel")
    report.print()
    report.write_json(args.json)


if __name__ == "__main__":
    main()
