"""``activations``: compute (or load cached) residual activations of two prompt sets."""

from __future__ import annotations

from refusal_core.cli.common import (
    activations_for,
    add_layers_arg,
    add_model_args,
    add_set_args,
    check_memory_before_load,
    emit,
    load_model_from_args,
)


def cmd_activations(args) -> None:
    check_memory_before_load(args)  # estimate (and --max-memory) from the files, before the load
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
            "layers": list(acts.layers),
        }

    def human() -> None:
        for which, info in summary.items():
            source = "cache" if info["from_cache"] else "computed"
            print(
                f"{which}: {info['prompts']} prompts, activations {info['shape']} [prompt, position, layer, d], layers {_ranges(info['layers'])} ({source}, key {info['key']})"
            )

    emit(args, summary, human)


def _ranges(layers: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2,5``."""
    runs: list[list[int]] = []
    for layer in layers:
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def add_parsers(sub) -> None:
    """``activations``."""
    acts = sub.add_parser(
        "activations", help="compute (or load cached) residual activations at post-instruction positions"
    )
    add_model_args(acts), add_set_args(acts), add_layers_arg(acts)
    acts.set_defaults(func=cmd_activations)
