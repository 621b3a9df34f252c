"""Cost of generation under interventions: side by side, hooked, weight-orthogonalized.

All cases decode the same prompts greedily for exactly ``--new-tokens`` tokens:
(a) K=4 variants (baseline, ablate 1 direction, ablate 3 directions, activation addition)
    in ONE ``generate_side_by_side`` call, against the same 4 variants as 4 sequential
    ``generate_completions`` calls (the sum of 4 interleaved single-variant timings);
(b) ``with ablate(model, direction): generate_completions(...)`` (hooks shared by all
    rows) against plain ``generate_completions(...)``; also
    ``generate_completions(..., Intervention(ablate=direction))``, which goes through the
    per-row hooks of ``row_interventions`` like every side-by-side column;
(c) ``with orthogonalized_weights(model, direction): generate_completions(...)`` against
    plain generation, with and without the cost of editing and restoring the weights;
(d) the absolute time of a 4-column side-by-side generation on ``bundled:refusal-organism``
    when it has been built (else the same shape on ``--model``, the organism's base), with
    forced length and with natural stopping (what a user waits for).

The directions are seeded random unit vectors: the point is cost, not effect.

Equal lengths: greedy decoding stops a row at its end-of-turn token and a batch when all
rows have stopped, so variants that answer shortly would look cheap. The benchmark sets
``generation_config.min_new_tokens`` on its own loaded model to ``--new-tokens``;
``generate`` then masks the end-of-turn tokens until that many tokens exist, so every row
of every case decodes exactly ``--new-tokens`` tokens (checked after every call) while the
library's own ``generate_side_by_side`` / ``generate_completions`` code paths are timed.

Run from the repository root: ``.venv/bin/python benchmarks/bench_generation.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, ContextManager, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# First: it sets OMP_WAIT_POLICY before torch is imported.
import torch  # noqa: E402

from benchmarks._common import Case, Report, Timings, apply_threads, base_parser, interleave  # noqa: E402
from refusal_core.generation import (  # noqa: E402
    Completion,
    GenerationSettings,
    end_of_turn_ids,
    generate_completions,
    generate_side_by_side,
)
from refusal_core.interventions.hooks import ablate  # noqa: E402
from refusal_core.interventions.spec import Intervention  # noqa: E402
from refusal_core.interventions.weights import orthogonalized_weights  # noqa: E402
from refusal_core.model.forward import tokenize_prompts  # noqa: E402
from refusal_core.model.loading import BUNDLED_ORGANISM, LoadedModel, bundled_model_dir, load_model  # noqa: E402
from refusal_core.prompts.chat import format_prompts  # noqa: E402
from refusal_core.prompts.loaders import builtin  # noqa: E402

SIDE_BY_SIDE_GOAL = 0.5
HOOK_GOAL = 1.15
ORTHO_TOLERANCE = 0.10
ORGANISM_GOAL_S = 15.0
# Derived and shared case names; the variants are always the 4 of benchmark_variants().
SIDE_BY_SIDE = "side_by_side K=4"
SEQUENTIAL = "sequential: 4 x generate_completions"
ORTHO_NO_EDIT = "orthogonalized minus enter+exit"


def random_directions(d_model: int, count: int, seed: int) -> torch.Tensor:
    """``[count, d_model]`` seeded random unit vectors (float32)."""
    generator = torch.Generator().manual_seed(seed)
    vectors = torch.randn(count, d_model, generator=generator)
    return vectors / vectors.norm(dim=-1, keepdim=True)


def benchmark_variants(loaded: LoadedModel, seed: int) -> list[Intervention]:
    """The four columns of (a): baseline, ablate 1 and 3 directions, activation addition."""
    directions = random_directions(loaded.d_model, 4, seed)
    return [
        Intervention(name="baseline"),
        Intervention(name="ablate 1 dir", ablate=directions[:1]),
        Intervention(name="ablate 3 dirs", ablate=directions[1:4]),
        Intervention(name="actadd", actadd=4.0 * directions[0], actadd_layer=loaded.n_layers // 2),
    ]


def benchmark_prompts(count: int) -> list[str]:
    """Alternately harmful and harmless built-in test prompts."""
    harmful = builtin("harmful", "test").instructions
    harmless = builtin("harmless", "test").instructions
    return [(harmful if i % 2 == 0 else harmless)[i // 2] for i in range(count)]


def force_length(loaded: LoadedModel, new_tokens: int | None) -> None:
    """Make every row decode exactly ``new_tokens`` tokens (see the module docstring); None undoes it."""
    loaded.model.generation_config.min_new_tokens = new_tokens


def check_length(completions: Sequence[Completion], new_tokens: int) -> None:
    short = [c for c in completions if c.n_tokens != new_tokens]
    if short:
        raise RuntimeError(
            f"{len(short)} replies decoded {short[0].n_tokens} tokens, not {new_tokens}; min_new_tokens was not honoured"
        )


def bare_model_generate(loaded: LoadedModel, prompts: list[str], new_tokens: int) -> list[Completion]:
    """The same greedy decoding as generate_completions, straight through ``model.generate``.

    No hooks at all (generate_completions always installs a row-count check hook), so the
    difference to the baseline case is the toolkit's own overhead.
    """
    tokenizer = loaded.tokenizer
    stop_ids = end_of_turn_ids(tokenizer)
    batch = tokenize_prompts(tokenizer, format_prompts(tokenizer, prompts), loaded.device)
    output = loaded.model.generate(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
        max_new_tokens=new_tokens,
        do_sample=False,
        repetition_penalty=1.0,
        temperature=None,
        top_p=None,
        top_k=None,
    )
    generated = output[:, batch["input_ids"].shape[1] :].tolist()
    stops = set(stop_ids)
    lengths = [next((i for i, token in enumerate(row) if token in stops), len(row)) for row in generated]
    return [
        Completion(prompt, "bare", "", length, length < len(row))
        for prompt, length, row in zip(prompts, lengths, generated)
    ]


def generation_cases(
    loaded: LoadedModel, prompts: list[str], variants: list[Intervention], settings: GenerationSettings
) -> list[Case]:
    """Every timed case of (a), (b) and (c), for one interleaved loop."""
    n = settings.max_new_tokens
    direction = variants[1].ablate

    def alone(variant: Intervention) -> Callable[[], None]:
        return lambda: check_length(generate_completions(loaded, prompts, variant, settings), n)

    def plain_inside(context: Callable[[], ContextManager]) -> Callable[[], None]:
        def run() -> None:
            with context():
                check_length(generate_completions(loaded, prompts, settings=settings), n)

        return run

    def side_by_side() -> None:
        for completions in generate_side_by_side(loaded, prompts, variants, settings).values():
            check_length(completions, n)

    def edit_only() -> None:
        with orthogonalized_weights(loaded.model, direction):
            pass

    def bare_generate() -> None:
        check_length(bare_model_generate(loaded, prompts, n), n)

    return [
        Case(SIDE_BY_SIDE, side_by_side),
        *(Case(f"alone: {variant.name}", alone(variant)) for variant in variants),
        Case("ablate() ctx: 1 dir", plain_inside(lambda: ablate(loaded.model, direction))),
        Case("orthogonalized_weights: 1 dir", plain_inside(lambda: orthogonalized_weights(loaded.model, direction))),
        Case("orthogonalized_weights enter+exit", edit_only),
        Case("bare model.generate (no hooks)", bare_generate),
    ]


def run_cases(
    loaded: LoadedModel, prompts: list[str], variants: list[Intervention], settings: GenerationSettings, repeats: int
) -> Timings:
    """Warm every case up on 2 tokens, then time them interleaved at full length."""
    warm = GenerationSettings(max_new_tokens=2, batch_size=settings.batch_size)
    force_length(loaded, warm.max_new_tokens)
    interleave(generation_cases(loaded, prompts, variants, warm), repeats=1, warmup=0)
    force_length(loaded, settings.max_new_tokens)
    return interleave(generation_cases(loaded, prompts, variants, settings), repeats, warmup=0)


def add_derived(timings: Timings, variants: list[Intervention]) -> None:
    """The sequential total of the single-variant calls, and orthogonalized generation without the edit."""
    timings.summed(SEQUENTIAL, [f"alone: {variant.name}" for variant in variants])
    timings.difference(ORTHO_NO_EDIT, "orthogonalized_weights: 1 dir", "orthogonalized_weights enter+exit")


def report_generation(report: Report) -> None:
    """Ratios of (a), (b) and (c) from the recorded cases."""
    baseline = "alone: baseline"
    report.compare(
        "side_by_side_vs_sequential",
        SIDE_BY_SIDE,
        SEQUENTIAL,
        f"<= {SIDE_BY_SIDE_GOAL}",
        lambda ratio: ratio <= SIDE_BY_SIDE_GOAL,
    )
    hook_goal, hook_check = f"<= {HOOK_GOAL}", lambda ratio: ratio <= HOOK_GOAL
    report.compare("hook_ablation_ctx_vs_baseline", "ablate() ctx: 1 dir", baseline, hook_goal, hook_check)
    report.compare("hook_ablation_row_vs_baseline", "alone: ablate 1 dir", baseline, hook_goal, hook_check)
    ortho_goal, ortho_check = f"~1.0 (+-{ORTHO_TOLERANCE})", lambda ratio: abs(ratio - 1) <= ORTHO_TOLERANCE
    report.compare("orthogonalized_vs_baseline", "orthogonalized_weights: 1 dir", baseline, ortho_goal, ortho_check)
    report.compare("orthogonalized_minus_edit_vs_baseline", ORTHO_NO_EDIT, baseline, ortho_goal, ortho_check)
    report.compare(
        "baseline_vs_bare_model_generate", baseline, "bare model.generate (no hooks)", "~1.0, library overhead"
    )


def bench_organism(prompts: list[str], settings: GenerationSettings, repeats: int, report: Report) -> None:
    """(d) Absolute seconds of a 4-column side-by-side generation on the organism."""
    goal, check = f"< {ORGANISM_GOAL_S:.0f} s", lambda seconds: seconds < ORGANISM_GOAL_S
    if not (bundled_model_dir("refusal-organism") / "config.json").is_file():
        report.note(
            f"(d) skipped: {BUNDLED_ORGANISM} is not built (python -m refusal_core organism build); "
            "reporting the same 4-column generation on the base model, which has the organism's architecture"
        )
        seconds = report.times[SIDE_BY_SIDE]["median_s"]
        report.add_value("side_by_side_4_columns_base_model", seconds, "s", goal, check(seconds))
        return
    organism = load_model(BUNDLED_ORGANISM)
    variants = benchmark_variants(organism, seed=0)
    n = settings.max_new_tokens
    warm = GenerationSettings(max_new_tokens=2, batch_size=settings.batch_size)
    force_length(organism, warm.max_new_tokens)
    generate_side_by_side(organism, prompts, variants, warm)

    def forced() -> None:
        for completions in generate_side_by_side(organism, prompts, variants, settings).values():
            check_length(completions, n)

    cases = [
        Case(f"organism K=4, {n} tokens forced", forced, setup=lambda: force_length(organism, n)),
        # What a user waits for: rows stop at their end of turn, the call when all have stopped.
        Case(
            f"organism K=4, natural stop (<= {n})",
            lambda: generate_side_by_side(organism, prompts, variants, settings),
            setup=lambda: force_length(organism, None),
        ),
    ]
    timings = interleave(cases, repeats, warmup=0)
    report.add_times(timings)
    for case, label in zip(cases, ("forced", "natural_stop")):
        seconds = report.times[case.name]["median_s"]
        report.add_value(f"side_by_side_4_columns_organism_{label}", seconds, "s", goal, check(seconds))


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=3)
    parser.add_argument("--prompts", type=int, default=4, help="prompts per call (default: %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=48, help="tokens decoded per reply (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random directions (default: %(default)s)")
    parser.add_argument("--skip-organism", action="store_true", help="skip (d)")
    args = parser.parse_args()
    apply_threads(args.threads)
    report = Report("bench_generation", vars(args))
    loaded = load_model(args.model)
    prompts = benchmark_prompts(args.prompts)
    variants = benchmark_variants(loaded, args.seed)
    # One chunk for the side-by-side call: all (prompt, variant) rows in one generate().
    settings = GenerationSettings(max_new_tokens=args.new_tokens, batch_size=len(prompts) * len(variants))
    report.note(f"{len(prompts)} prompts x {args.new_tokens} tokens (forced), greedy; ms/unit = ms per decoding step")
    timings = run_cases(loaded, prompts, variants, settings, args.repeats)
    add_derived(timings, variants)
    report.add_times(timings, per={name: args.new_tokens for name in timings.wall if "enter+exit" not in name})
    report_generation(report)
    if args.skip_organism:
        report.note("(d) skipped (--skip-organism)")
    else:
        bench_organism(prompts, settings, args.repeats, report)
    report.print()
    report.write_json(args.json)


if __name__ == "__main__":
    main()
