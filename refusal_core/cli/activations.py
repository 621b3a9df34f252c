"""``activations``: compute (or load cached) residual activations of two prompt sets."""

from __future__ import annotations

from refusal_core.cli.common import activations_for, add_model_args, add_set_args, emit, load_model_from_args


def cmd_activations(args) -> None:
    loaded = load_model_from_args(args)
    summary = {}
    for which in ("harmful", "harmless"):
        prompts, acts = activations_for(args, loaded, which)
        summary[which] = {
            "prompts": len(prompts),
            "shape": list(acts.acts.shape),
            "from_cache": acts.from_cache,
            "key": acts.key,
            "positions": list(acts.positions),
        }

    def human() -> None:
        for which, info in summary.items():
            source = "cache" if info["from_cache"] else "computed"
            print(
                f"{which}: {info['prompts']} prompts, activations {info['shape']} [prompt, position, layer, d] ({source}, key {info['key']})"
            )

    emit(args, summary, human)


def add_parsers(sub) -> None:
    """``activations``."""
    acts = sub.add_parser(
        "activations", help="compute (or load cached) residual activations at post-instruction positions"
    )
    add_model_args(acts), add_set_args(acts)
    acts.set_defaults(func=cmd_activations)
