"""The loading preamble every command shares: model and prompt-set arguments, loading them,
progress bars on stderr, ``--json`` output and ``CliError`` for bad arguments (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

from refusal_core.errors import SettingsError
from refusal_core.judges.registry import DEFAULT_JUDGE
from refusal_core.model.loading import BUNDLED_ORGANISM
from refusal_core.progress import Progress, stage_text

EXIT_BAD_INPUT = 2


class CliError(SettingsError):
    """Bad input discovered by the CLI itself."""


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=BUNDLED_ORGANISM,
        help=f"model spec: {BUNDLED_ORGANISM}, bundled:smollm2-135m-instruct, a HF id or a local directory",
    )
    parser.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, mps ...")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16 or auto")
    parser.add_argument(
        "--device-map",
        default=None,
        help='"auto" spreads a large model over all GPUs (and, with --max-memory, offloads the rest to disk)',
    )
    parser.add_argument(
        "--quantize",
        default=None,
        choices=("4bit", "8bit"),
        help="load the weights 4- or 8-bit quantized (needs bitsandbytes and a CUDA GPU)",
    )
    parser.add_argument(
        "--max-memory",
        default=None,
        help="memory budget such as 8GB: with --device-map the weights beyond it are offloaded to disk; activation extraction refuses to start when its estimate exceeds it",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)"
    )
    parser.add_argument("--system-prompt", default=None, help="system prompt for the chat template")
    parser.add_argument(
        "--chat-template-option",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="variable for the chat template, value read as JSON (repeatable): e.g. enable_thinking=false",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable JSON output")


def add_judge_arg(parser: argparse.ArgumentParser) -> None:
    """``--judge``: which registered judge gives the verdicts (choices and help from judges.registry)."""
    parser.add_argument("--judge", choices=judge_choices(), default=DEFAULT_JUDGE, help=judge_help())


def judge_choices() -> tuple[str, ...]:
    from refusal_core.judges.registry import judge_names

    return judge_names()


def judge_help(default: str = DEFAULT_JUDGE) -> str:
    """One line per registered judge, for ``--judge``'s help."""
    from refusal_core.judges.registry import judges

    return "; ".join(
        f"{name}: {entry.description}" + (" (default)" if name == default else "") for name, entry in judges().items()
    )


def add_set_args(parser: argparse.ArgumentParser, split: str = "train") -> None:
    parser.add_argument(
        "--harmful",
        default=f"builtin:harmful/{split}",
        help="prompt file (.txt/.json/.jsonl/.csv), builtin:harmful[/split] or hf:name[:split]",
    )
    parser.add_argument("--harmless", default=f"builtin:harmless/{split}", help="as --harmful")
    parser.add_argument("--column", default=None, help="column holding the prompts in .csv/.json(l)/hf sets")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many prompts of each set")
    parser.add_argument("--batch-size", type=int, default=16)


def add_layers_arg(parser: argparse.ArgumentParser) -> None:
    """``--layers``: record only these layers of the residual stream (default: all)."""
    parser.add_argument(
        "--layers",
        default=None,
        help="record only these layers, e.g. 10,12,14-18 (block inputs 0..N-1, N = the last block's output; "
        "default: all). Hooks sit on those blocks only and the result holds only them",
    )


def layers_from_args(args) -> tuple[int, ...] | None:
    from refusal_core.activations.layers import parse_layer_spec

    spec = getattr(args, "layers", None)
    return None if spec is None else parse_layer_spec(spec)


def check_memory_before_load(args, sets: tuple[str, ...] = ("harmful", "harmless")) -> None:
    """Print each set's extraction estimate from the model's files and refuse (exit 2) one
    over ``--max-memory``, before the model is loaded. Skipped where the files give no
    estimate (then the check after loading applies) and with ``--device-map``/``--quantize``,
    where the weights held in memory are not the weights on disk."""
    layers = layers_from_args(args)  # a malformed --layers fails here, before anything loads
    if getattr(args, "device_map", None) or getattr(args, "quantize", None):
        return
    from refusal_core.activations.memory import check_budget
    from refusal_core.activations.preload import estimate_before_load
    from refusal_core.model.loading import resolve_dtype
    from refusal_core.model.placement import parse_bytes

    budget = parse_bytes(args.max_memory) if getattr(args, "max_memory", None) else None
    for which in sets:
        prompts = prompt_set(getattr(args, which), args.column, args.limit)
        estimate = estimate_before_load(
            args.model,
            resolve_dtype(args.dtype),
            prompts.instructions,
            chat=chat_format(args),
            layers=layers,
            batch_size=args.batch_size,
            trust_remote_code=args.trust_remote_code,
        )
        if estimate is None:
            return
        args.memory_estimated = True
        if not args.json:  # stderr: stdout stays clean
            print(
                f"{which} activations, {len(prompts.instructions)} prompts (before loading): {estimate.line()}",
                file=sys.stderr,
            )
        check_budget(estimate, budget)


def load_model_from_args(args):
    from refusal_core.model.loading import load_model
    from refusal_core.prompts.template_options import parse_template_options

    parse_template_options(getattr(args, "chat_template_option", None))  # a bad option fails before the load

    return load_model(
        args.model,
        device=args.device,
        dtype=args.dtype,
        device_map=args.device_map,
        trust_remote_code=args.trust_remote_code,
        quantize=getattr(args, "quantize", None),
        max_memory=getattr(args, "max_memory", None),
    )


def chat_format(args):
    from refusal_core.prompts.chat import ChatFormat
    from refusal_core.prompts.template_options import parse_template_options

    options = parse_template_options(getattr(args, "chat_template_option", None))
    return ChatFormat(system_prompt=args.system_prompt, template_options=options)


def prompt_set(spec: str, column: str | None, limit: int | None):
    from refusal_core.prompts.loaders import resolve_prompt_set

    prompts = resolve_prompt_set(spec, column=column)
    if limit is not None:
        if limit < 1:
            raise CliError(f"--limit must be at least 1, got {limit}.")
        prompts = prompts.head(limit)
    return prompts


def progress_bar(label: str, quiet: bool) -> Progress | None:
    """A ``Progress`` drawing one tqdm line on stderr (stdout stays clean for --json):
    the stage text, done of total and tqdm's own elapsed/remaining estimate."""
    if quiet:
        return None
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int, **info: object) -> None:
        nonlocal bar
        if bar is None and done >= total:
            return  # nothing left to show (e.g. the closing report after the bar finished)
        stage = stage_text(info)
        if bar is None:
            bar = tqdm(
                total=total,
                desc=label,
                file=sys.stderr,
                leave=False,
                bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]",
            )
        if stage:
            bar.set_description_str(f"{label}: {stage}", refresh=False)
        bar.total = total
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            bar = None

    return update


def emit(args, payload: dict, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(payload, default=str))
    else:
        human()


def activations_for(args, loaded, which: str):
    from refusal_core.activations.extract import extract_activations, extraction_memory
    from refusal_core.model.placement import parse_bytes

    prompts = prompt_set(getattr(args, which), args.column, args.limit)
    budget = parse_bytes(args.max_memory) if getattr(args, "max_memory", None) else None
    layers = layers_from_args(args)
    if not args.json and not getattr(args, "memory_estimated", False):  # not printed before loading
        estimate = extraction_memory(
            loaded, prompts.instructions, chat=chat_format(args), batch_size=args.batch_size, layers=layers
        )
        print(f"{which} activations, {len(prompts.instructions)} prompts: {estimate.line()}", file=sys.stderr)
    acts = extract_activations(
        loaded,
        prompts.instructions,
        chat=chat_format(args),
        batch_size=args.batch_size,
        progress=progress_bar(f"{which} activations", args.json),
        max_memory=budget,
        layers=layers,
    )
    if acts.cache_warning:
        print(f"warning: {which} activations: {acts.cache_warning}", file=sys.stderr)
    return prompts, acts


def check_layer(layer: int, n_layers: int) -> None:
    if not 0 <= layer < n_layers:
        raise CliError(f"--layer {layer} is out of range: this model has layers 0..{n_layers - 1}; choose one of them.")


def _is_set(path: str) -> bool:
    return Path(path).exists() or Path(path + ".safetensors").exists()


def split_direction_spec(spec: str) -> tuple[str, str]:
    """``PATH`` or ``PATH:name1,name2`` -> (path, names); a colon inside the path (``runs/a:b/dim``)
    belongs to the path, since a set's names follow the last colon."""
    if _is_set(spec) or ":" not in spec:
        return spec, ""
    last, _, after_last = spec.rpartition(":")
    first, _, after_first = spec.partition(":")
    for path, names in ((last, after_last), (first, after_first)):
        if path and _is_set(path):
            return path, names
    return last, after_last  # neither exists: the error names the path


def load_directions(spec: str, d_model: int):
    """``PATH`` or ``PATH:name1,name2`` -> a (sub)set checked against the model width."""
    from refusal_core.directions.base import load_direction_set

    path, names = split_direction_spec(spec)
    directions = load_direction_set(path, d_model=d_model)
    return directions.select(names.split(",")) if names else directions


def added_direction(spec: str, loaded, layer: int | None, layer_flag: str):
    """The one direction ``--actadd PATH:name`` adds, and its layer: ``layer`` (the value of
    ``layer_flag``) when given, else the layer its provenance records; both checked before any work."""
    directions = load_directions(spec, loaded.d_model)
    if len(directions) != 1:
        raise CliError(f"--actadd takes one direction (PATH:name); {spec} holds {len(directions)}.")
    if layer is None:
        layer = directions.provenance[0].get("layer")
    if layer is None:
        raise CliError(f"--actadd needs {layer_flag}: the direction's provenance records no layer.")
    check_layer(int(layer), loaded.n_layers)
    return directions, int(layer)
