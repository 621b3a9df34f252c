"""``generate``: replies side by side, baseline next to ablation and activation addition.
"""

from __future__ import annotations

import json

from refusal_core.cli.common import (
    CliError,
    add_model_args,
    chat_format,
    check_layer,
    load_directions,
    load_model_from_args,
    progress_bar,
    prompt_set,
)
from refusal_core.judges.substring import refusal_rate


def _interventions(args, loaded) -> list:
    from refusal_core.interventions.spec import Intervention

    variants = []
    if args.ablate:
        directions = load_directions(args.ablate, loaded.d_model)
        variants.append(Intervention.from_directions(f"ablate({len(directions)})", directions, mode=args.ablate_mode))
    if args.actadd:
        directions = load_directions(args.actadd, loaded.d_model)
        if len(directions) != 1:
            raise CliError(f"--actadd takes one direction (PATH:name); {args.actadd} holds {len(directions)}.")
        layer = args.layer if args.layer is not None else directions.provenance[0].get("layer")
        if layer is None:
            raise CliError("--actadd needs --layer: the direction's provenance records no layer.")
        check_layer(int(layer), loaded.n_layers)
        variants.append(Intervention.from_direction_addition(f"actadd(L{layer},{args.coeff:+g})", directions, directions.names[0], args.coeff, int(layer)))
    return variants


def cmd_generate(args) -> None:
    from refusal_core.generation import GenerationSettings, generate_side_by_side
    from refusal_core.interventions.spec import Intervention
    from refusal_core.judges.substring import SubstringJudge

    loaded = load_model_from_args(args)
    prompts = prompt_set(args.prompts, args.column, args.limit)
    variants = _interventions(args, loaded)
    if args.baseline or not variants:
        variants.insert(0, Intervention())
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature, seed=args.seed, batch_size=args.batch_size)
    columns = generate_side_by_side(loaded, prompts.instructions, variants, settings, chat_format(args), progress_bar("generating", args.json))
    judge = SubstringJudge(extra=tuple(args.refusal_phrase or ()))
    summary = {}
    for name, completions in columns.items():
        refused = judge.judge(list(prompts.instructions), [c.text for c in completions])
        summary[name] = {"refusal_rate": refusal_rate(refused), "n": len(refused)}
        for completion, flag in zip(completions, refused):
            if args.json:
                print(json.dumps({"variant": name, "instruction": completion.instruction, "completion": completion.text, "refused": flag, "n_tokens": completion.n_tokens}))
            else:
                print(f"[{name}] {'REFUSED' if flag else 'complied'} | {completion.instruction}\n    {completion.text.strip()}\n")
    if args.json:
        print(json.dumps({"summary": summary, "model": loaded.spec, "n_prompts": len(prompts)}))
    else:
        for name, info in summary.items():
            print(f"{name}: refusal rate {info['refusal_rate']:.1%} ({info['n']} prompts)")


def add_parsers(sub) -> None:
    """``generate``."""
    gen = sub.add_parser("generate", help="generate side by side: baseline, ablation, actadd")
    add_model_args(gen)
    gen.add_argument("--prompts", default="builtin:harmful/test", help="prompt file or builtin:/hf: spec")
    gen.add_argument("--column", default=None)
    gen.add_argument("--limit", type=int, default=None)
    gen.add_argument("--ablate", default=None, help="direction set to project out: PATH or PATH:name1,name2")
    gen.add_argument("--ablate-mode", choices=["orthogonal", "sequential"], default="orthogonal")
    gen.add_argument("--actadd", default=None, help="one direction to add: PATH:name")
    gen.add_argument("--layer", type=int, default=None, help="actadd layer (default: the direction's own layer)")
    gen.add_argument("--coeff", type=float, default=1.0, help="actadd coefficient (+ induces refusal, - suppresses)")
    gen.add_argument("--baseline", action="store_true", help="also generate without intervention")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch-size", type=int, default=16)
    gen.add_argument("--refusal-phrase", action="append", help="extra phrase that counts as refusal (repeatable)")
    gen.set_defaults(func=cmd_generate)
