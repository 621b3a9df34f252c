"""Direction selection: many candidates per forward pass vs one candidate at a time.

``score_candidates`` puts rows of several candidates (each row under its own candidate's
ablation or activation addition) into one forward pass; ``score_candidates_sequential``
does the same arithmetic one candidate and one measure at a time. Same scores (tested to
1e-4); this prints the speed-up.

    .venv/bin/python benchmarks/bench_selection.py [--candidates 6] [--prompts 8]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Case, Report, apply_threads, base_parser, interleave  # noqa: E402


def main() -> None:
    parser = base_parser(__doc__, repeats=3)
    parser.add_argument("--candidates", type=int, default=6, help="DIM candidates (last position, spread over layers)")
    parser.add_argument("--prompts", type=int, default=8, help="val prompts per set")
    args = parser.parse_args()
    apply_threads(args.threads)
    from refusal_core.model.loading import load_model
    from refusal_core.organism.report import dim_candidates
    from refusal_core.prompts.loaders import builtin
    from refusal_core.selection.scoring import score_candidates, score_candidates_sequential

    loaded = load_model(args.model)
    step = max(1, int(0.8 * loaded.n_layers) // args.candidates)
    pool = dim_candidates(loaded, builtin("harmful", "train").head(32), builtin("harmless", "train").head(32), 0.8, True, step)
    candidates = pool.select(pool.names[: args.candidates])
    harmful = list(builtin("harmful", "val").instructions[: args.prompts])
    harmless = list(builtin("harmless", "val").instructions[: args.prompts])
    report = Report("bench_selection", vars(args))
    report.note(f"{len(candidates)} candidates x ({len(harmful)} harmful + 2 x {len(harmless)} harmless) rows")
    cases = [
        Case("batched candidates", lambda: score_candidates(loaded, candidates, harmful, harmless, batch_size=32)),
        Case("one candidate at a time", lambda: score_candidates_sequential(loaded, candidates, harmful, harmless, batch_size=32)),
    ]
    report.add_times(interleave(cases, args.repeats))
    report.compare("batched_vs_sequential_selection", "batched candidates", "one candidate at a time", "< 1", lambda ratio: ratio < 1)
    report.print()
    report.write_json(args.json)


if __name__ == "__main__":
    main()
