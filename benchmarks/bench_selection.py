"""Direction selection: racing against exhaustive scoring of the same candidates and prompts.

``race_candidates`` (what ``directions select`` and the Directions page run by default)
scores most candidates on a few prompts and only finalists on every prompt;
``race_candidates(exhaustive=True)`` scores every candidate on every prompt with the same
row machinery. One run times racing, then exhaustive scoring, then racing again (the two
racing samples bracket the exhaustive one, so a slow spell hits both cases alike), and
prints:

- ``RATIO racing_vs_exhaustive`` (goal <= 0.1) and the ratio of rows run;
- whether both choose the same candidate, and if not, whether racing's choice is within the
  noise of exhaustive's: from exhaustive's per-prompt values, a bootstrap over prompts
  (2000 resamples) of the difference between the two candidates' mean bypass, induce and
  KL; "within noise" when every 95% interval contains 0.

    .venv/bin/python benchmarks/bench_selection.py --model bundled:refusal-organism [--layer-step 3] [--prompts 8]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import Report, Timings, apply_threads, base_parser, timed  # noqa: E402


def _bootstrap_difference(
    exhaustive, a: str, b: str, measure: str, resamples: int = 2000
) -> tuple[float, float, float]:
    """Mean of ``a - b`` in ``measure`` over the prompts both saw, and its bootstrap 95% interval."""
    import torch

    index = {name: i for i, name in enumerate(exhaustive.timing["names"])}
    seen_a, seen_b = exhaustive.samples[(index[a], measure)], exhaustive.samples[(index[b], measure)]
    prompts = sorted(seen_a)
    diffs = torch.tensor([seen_a[p] - seen_b[p] for p in prompts], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(len(prompts), (resamples, len(prompts)), generator=generator)
    means = diffs[picks].mean(-1)
    return float(diffs.mean()), float(means.quantile(0.025)), float(means.quantile(0.975))


def main() -> None:
    parser = base_parser(__doc__, repeats=1)
    parser.add_argument(
        "--layer-step", type=int, default=3, help="DIM candidates at every post-instruction position, every n-th layer"
    )
    parser.add_argument(
        "--prompts", type=int, default=8, help="val prompts per set (category-balanced sample, as the page takes)"
    )
    args = parser.parse_args()
    apply_threads(args.threads)
    from refusal_core.model.loading import load_model
    from refusal_core.organism.report import dim_candidates
    from refusal_core.prompts.loaders import builtin
    from refusal_core.prompts.sets import sample_prompts
    from refusal_core.selection.policy import select_with_fallback
    from refusal_core.selection.racing import race_candidates

    loaded = load_model(args.model)
    candidates = dim_candidates(
        loaded, builtin("harmful", "train"), builtin("harmless", "train"), 1.0, False, args.layer_step
    )
    harmful = list(sample_prompts(builtin("harmful", "val"), args.prompts).instructions)
    harmless = list(sample_prompts(builtin("harmless", "val"), args.prompts).instructions)
    report = Report("bench_selection", vars(args))
    report.note(f"{len(candidates)} candidates x ({len(harmful)} harmful + {len(harmless)} harmless) val prompts")
    timings, results = Timings(), {}
    for name, exhaustive in (("racing", False), ("exhaustive", True), ("racing", False)):
        wall, cpu, result = timed(
            lambda every=exhaustive: race_candidates(loaded, candidates, harmful, harmless, exhaustive=every)
        )
        timings.add(name, wall, cpu)
        results[name] = result
        report.note(f"{name}: {wall:.1f} s, {result.timing['rows']} rows, finalists {result.timing['finalists'][:4]}")
    report.add_times(timings)
    raced, full = results["racing"], results["exhaustive"]
    full.timing["names"] = list(candidates.names)
    report.compare("racing_vs_exhaustive", "racing", "exhaustive", "<= 0.1", lambda ratio: ratio <= 0.1)
    report.add_value(
        "rows_ratio",
        raced.timing["rows"] / full.timing["rows"],
        "racing rows / exhaustive rows",
        "<= 0.1",
        raced.timing["rows"] / full.timing["rows"] <= 0.1,
    )
    pick_raced, pick_full = select_with_fallback(raced), select_with_fallback(full)
    same = pick_raced.name == pick_full.name
    report.note(
        f"exhaustive chooses {pick_full.name} ({pick_full.rule}); racing chooses {pick_raced.name} ({pick_raced.rule}); "
        f"{'SAME' if same else 'DIFFERENT'}"
    )
    within = True
    for measure in ("bypass", "induce", "kl"):
        mean, low, high = _bootstrap_difference(full, pick_raced.name, pick_full.name, measure)
        within &= low <= 0 <= high or same
        report.note(
            f"{measure}: racing's pick minus exhaustive's = {mean:+.4f} (bootstrap 95% over prompts [{low:+.4f}, {high:+.4f}])"
        )
    report.add_value("same_choice_or_within_noise", float(within), "1 = yes", "1", within)
    report.print()
    report.write_json(args.json)


if __name__ == "__main__":
    main()
