"""``generate``: replies side by side, baseline next to ablation and activation addition,
each column judged complied / refused / deflected / broken with its harmless first-token KL.
"""

from __future__ import annotations

import json
from pathlib import Path

from refusal_core.cli.common import (
    CliError,
    add_judge_arg,
    add_model_args,
    added_direction,
    chat_format,
    check_layer,
    load_directions,
    load_model_from_args,
    progress_bar,
    prompt_set,
    split_direction_spec,
)
from refusal_core.damage import KL_PROMPTS
from refusal_core.interventions.spec import ABLATION_MODES
from refusal_core.judges import MIN_RATE_TOKENS
from refusal_core.judges.verdict import LABELS


def _interventions(args, loaded) -> list:
    """One column per ``--ablate`` and per ``--actadd`` (each flag repeatable), in the order given."""
    from refusal_core.interventions.spec import Intervention

    variants = []
    for spec in args.ablate or ():
        directions = load_directions(spec, loaded.d_model)
        label = f"ablate({len(directions)})" if len(args.ablate) == 1 else f"ablate({_short(spec)})"
        variants.append(Intervention.from_directions(label, directions, mode=args.ablate_mode))
    for spec in args.actadd or ():
        directions, layer = added_direction(spec, loaded, args.layer, "--layer")
        extra = "" if len(args.actadd) == 1 else f"{_short(spec)},"
        variants.append(
            Intervention.from_direction_addition(
                f"actadd({extra}L{layer},{args.coeff:+g})", directions, directions.names[0], args.coeff, layer
            )
        )
    names = [variant.name for variant in variants]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CliError(
            f"Two columns would both be named {repeated[0]!r} (the same --ablate or --actadd given twice); give each once."
        )
    return variants


def _trace_directions(args, loaded):
    """The ``[k, d]`` directions ``--trace`` projects on, checked before any generation."""
    check_layer(args.trace, loaded.n_layers)
    spec = args.trace_direction or next(iter(args.ablate or args.actadd or []), None)
    if spec is None:
        raise CliError(
            "--trace needs directions to project on: give --trace-direction PATH[:names], --ablate or --actadd."
        )
    return load_directions(spec, loaded.d_model).vectors


def _traces(args, loaded, columns, variants, directions, chat) -> dict:
    """``--trace LAYER``: each reply's per-token projection on the traced directions."""
    from refusal_core.views.trace import trace_completions

    by_name = {variant.name: variant for variant in variants}
    return {
        name: trace_completions(loaded, completions, by_name[name], args.trace, directions, chat, args.batch_size)
        for name, completions in columns.items()
    }


def _short(spec: str) -> str:
    """A column label for a direction spec: the file stem, with any chosen names."""
    path, names = split_direction_spec(spec)
    return Path(path).name + (f":{names}" if names else "")


def _kl_prompts(args) -> list[str]:
    """Harmless prompts for each column's KL (none with ``--kl-limit 0``)."""
    if args.kl_limit == 0:
        return []
    return list(prompt_set(args.kl_prompts, None, args.kl_limit).instructions)


def cmd_generate(args) -> None:
    from refusal_core.damage import judge_by_name, judge_columns
    from refusal_core.generation import GenerationSettings, generate_side_by_side
    from refusal_core.interventions.spec import Intervention

    judge = judge_by_name(args.judge, tuple(args.refusal_phrase or ()))
    loaded = load_model_from_args(args)
    trace_directions = _trace_directions(args, loaded) if args.trace is not None else None
    prompts = prompt_set(args.prompts, args.column, args.limit)
    variants = _interventions(args, loaded)
    if args.baseline or not variants:
        variants.insert(0, Intervention())
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    chat = chat_format(args)
    columns = generate_side_by_side(
        loaded, prompts.instructions, variants, settings, chat, progress_bar("generating", args.json)
    )
    damage = judge_columns(loaded, columns, variants, judge, _kl_prompts(args), chat=chat, batch_size=args.batch_size)
    traces = _traces(args, loaded, columns, variants, trace_directions, chat) if trace_directions is not None else {}
    for name, completions in columns.items():
        for index, (completion, verdict) in enumerate(zip(completions, damage[name].verdicts)):
            trace = {"trace": traces[name][index].as_dict(), "trace_layer": args.trace} if traces else {}
            if args.json:
                print(
                    json.dumps(
                        {
                            "variant": name,
                            "instruction": completion.instruction,
                            "completion": completion.text,
                            "n_tokens": completion.n_tokens,
                            **verdict.as_dict(),
                            **trace,
                        }
                    )
                )
            else:
                print(f"[{name}] {verdict.label.upper()} | {completion.instruction}\n    {completion.text.strip()}\n")
                if trace:
                    values = " ".join(f"{value:+.2f}" for value in trace["trace"]["projections"])
                    print(f"    projection at layer {args.trace}, per token: {values}\n")
    summary = {name: column.summary() for name, column in damage.items()}
    if args.json:
        print(
            json.dumps(
                {
                    "summary": summary,
                    "model": loaded.spec,
                    "n_prompts": len(prompts),
                    "judge": args.judge,
                    "max_new_tokens": args.max_new_tokens,
                }
            )
        )
        return
    for name, info in summary.items():
        kl = "not measured" if info["kl"] is None else f"{info['kl']:.4f}"
        shares = ", ".join(
            f"{label} {'not judged' if info[label] is None else format(info[label], '.1%')}" for label in LABELS
        )
        print(f"{name}: {shares} ({info['n']} prompts, judge {args.judge}); harmless KL {kl}")
        if info["warning"]:
            print(f"  WARNING: {info['warning']}")


def add_parsers(sub) -> None:
    """``generate``."""
    gen = sub.add_parser("generate", help="generate side by side: baseline, ablation, actadd")
    add_model_args(gen)
    gen.add_argument("--prompts", default="builtin:harmful/test", help="prompt file or builtin:/hf: spec")
    gen.add_argument("--column", default=None)
    gen.add_argument("--limit", type=int, default=None)
    gen.add_argument(
        "--ablate",
        action="append",
        default=None,
        help="direction set to project out: PATH or PATH:name1,name2 (repeatable: one column each)",
    )
    gen.add_argument(
        "--ablate-mode",
        choices=list(ABLATION_MODES),
        default="orthogonal",
        help="orthogonal (project out the span), sequential (one direction after another), "
        "norm-preserving (project out, then restore each residual vector's norm)",
    )
    gen.add_argument(
        "--actadd", action="append", default=None, help="one direction to add: PATH:name (repeatable: one column each)"
    )
    gen.add_argument("--layer", type=int, default=None, help="actadd layer (default: the direction's own layer)")
    gen.add_argument("--coeff", type=float, default=1.0, help="actadd coefficient (+ induces refusal, - suppresses)")
    gen.add_argument("--baseline", action="store_true", help="also generate without intervention")
    gen.add_argument(
        "--max-new-tokens",
        type=int,
        default=MIN_RATE_TOKENS,
        help=f"reply length (default {MIN_RATE_TOKENS}: refusals that start late are missed at 24 to 32)",
    )
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=16)
    add_judge_arg(gen)
    gen.add_argument(
        "--kl-prompts", default="builtin:harmless/test", help="harmless prompts for each column's first-token KL"
    )
    gen.add_argument(
        "--kl-limit", type=int, default=KL_PROMPTS, help=f"use this many of them (default {KL_PROMPTS}; 0: no KL)"
    )
    gen.add_argument(
        "--refusal-phrase",
        action="append",
        help="extra phrase that counts as refusal (repeatable; --judge substring only)",
    )
    gen.add_argument(
        "--trace",
        type=int,
        default=None,
        metavar="LAYER",
        help="add each reply's per-token residual projection at this layer to the output (--json: a 'trace' field)",
    )
    gen.add_argument(
        "--trace-direction", default=None, help="directions the trace projects on (default: --ablate, else --actadd)"
    )
    gen.set_defaults(func=cmd_generate)
