"""The Directions page's two long actions with the page's defaults, timed as a user waits for them.

The page's "Score candidates" calls ``race_candidates`` on the DIM candidates of the Data
page's default prompts (64 train prompts per set, every post-instruction position and layer)
with 16 validation prompts per set and the default filters; its "Optimize" calls
``optimize_direction`` from the chosen (or closest) candidate with the page's defaults.
This script makes the same calls, prints the progress lines the page shows (every 15 s),
each action's seconds against its 2-minute goal, and refusal score and harmless KL before
and after optimization.

    .venv/bin/python benchmarks/time_page_defaults.py [--model bundled:refusal-organism]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Report, apply_threads, base_parser  # noqa: E402


def _printer(label: str):
    from refusal_core.progress import ProgressClock, stage_text

    clock, last = ProgressClock(), [0.0]

    def update(done: int, total: int, /, **info: object) -> None:  # the one Progress signature
        line = clock.line(label, done, total, stage_text(info))
        if time.perf_counter() - last[0] > 15 or done >= total:
            last[0] = time.perf_counter()
            print(f"  {line}", flush=True)

    return update


def main() -> None:
    parser = base_parser(__doc__, repeats=1)
    parser.set_defaults(model="bundled:refusal-organism", threads=0)
    args = parser.parse_args()
    apply_threads(args.threads)
    from refusal_core.activations.extract import default_positions, extract_activations
    from refusal_core.directions import dim
    from refusal_core.directions.registry import FitInput
    from refusal_core.model.loading import load_model
    from refusal_core.prompts.loaders import builtin
    from refusal_core.prompts.sets import sample_prompts
    from refusal_core.selection.optimize import OptimizeSettings, optimize_direction
    from refusal_core.selection.policy import select_with_fallback
    from refusal_core.selection.racing import race_candidates
    from refusal_core.selection.result import SelectionFilters

    loaded = load_model(args.model)
    report = Report("time_page_defaults", vars(args))
    train = {kind: sample_prompts(builtin(kind, "train"), 64) for kind in ("harmful", "harmless")}
    acts = {
        kind: extract_activations(loaded, train[kind].instructions, default_positions(loaded.tokenizer))
        for kind in train
    }
    candidates = dim.fit(
        FitInput(loaded, train["harmful"], train["harmless"], acts["harmful"], acts["harmless"]), dim.DimSettings()
    )
    harmful_val = list(sample_prompts(builtin("harmful", "val"), 16).instructions)
    harmless_val = list(sample_prompts(builtin("harmless", "val"), 16).instructions)
    started = time.perf_counter()
    result = race_candidates(
        loaded, candidates, harmful_val, harmless_val, SelectionFilters(), progress=_printer("Scoring")
    )
    seconds = time.perf_counter() - started
    pick = select_with_fallback(result)
    report.note(
        f"Score candidates: {len(candidates)} candidates, {result.timing['rows']} rows; {pick.describe()}: {pick.name}"
    )
    report.add_value("page_score_candidates_s", seconds, "s", "<= 120", seconds <= 120)
    defaults = OptimizeSettings()
    harmful = list(sample_prompts(builtin("harmful", "train"), defaults.max_harmful).instructions)
    harmless = list(sample_prompts(builtin("harmless", "train"), defaults.max_harmless).instructions)
    started = time.perf_counter()
    learnt = optimize_direction(
        loaded, harmful, harmless, candidates.select([pick.name]), defaults, progress=_printer("Optimizing")
    )
    seconds = time.perf_counter() - started
    first, final = learnt.history[0], learnt.final
    report.note(
        f"Optimize from {pick.name}: refusal score {first['refusal_score']:+.2f} -> {final['refusal_score']:+.2f}, "
        f"harmless KL {first['kl']:.4f} -> {final['kl']:.4f} ({len(harmful)} + {len(harmless)} train prompts)"
    )
    report.add_value("page_optimize_s", seconds, "s", "<= 120", seconds <= 120)
    report.print()
    report.write_json(args.json)


if __name__ == "__main__":
    main()
