"""The GPU check: what the toolkit's hooks and the streaming export cost on a CUDA machine.

On one CUDA device, in bfloat16, with a random-weight Llama of TinyLlama's shape (22 layers,
width 2048, MLP 5632, vocabulary 32000: 1.10B parameters) built from transformers' config,
it measures in one run, interleaved (each repeat runs every case once, the order rotated):

1. activation extraction (``extract_activations``: hooks recording every layer's residual at
   the last 5 positions, moved to CPU batch by batch) against a bare forward pass of the same
   batches through the base model, no hooks: ``RATIO extraction / bare forward``;
2. greedy generation of ``--new-tokens`` tokens with one direction ablated by hooks at every
   layer (``ablate``) against plain generation: ``RATIO hook-ablated / plain generation``;
3. the streaming export of the same model saved as bf16 shards of at most 1 GB, run as
   ``export-model`` in a fresh process under ``/usr/bin/time``: its time and peak resident
   memory as a ratio to the weights on disk (the export runs on CPU; the GPU is not used).

Output: one line per measurement sample, then ``RATIO <name>: <x>`` lines and ``MEASURE
<name>: <value>`` lines, then one JSON object (keys: device, torch, params, dtype, repeats,
seconds {case: [samples]}, medians {case: s}, ratios {name: x}, export {seconds, peak_rss_bytes,
weights_bytes, peak_over_weights}). Without CUDA it prints ``NO CUDA DEVICE: nothing measured``
and exits with code 3.

Run from the repository root on a CUDA machine:
``.venv/bin/python benchmarks/gpu_check.py`` (2.2 GB of bf16 weights on the GPU and on disk in
``--folder``, default ``/tmp/refusal-atlas-gpu-check``; its run time is not measured yet).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.shapes import TINYLLAMA  # noqa: E402

SHAPE = dict(TINYLLAMA)  # a copy: --layers changes it
TOPICS = ["the sea", "bread", "a bicycle", "the moon", "tax forms", "a garden", "chess", "volcanoes"]


def prompts(n: int) -> list[str]:
    return [f"Write {3 + i % 5} sentences about {TOPICS[i % len(TOPICS)]} for reader number {i}." for i in range(n)]


def synchronized(run) -> float:
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - started


def build(folder: Path, device: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    from refusal_core.model.loading import LoadedModel
    from refusal_core.model.tiny import tiny_tokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **SHAPE), dtype=torch.bfloat16)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02)
    if not (folder / "config.json").is_file():
        model.save_pretrained(folder, max_shard_size="1GB")
        tiny_tokenizer().save_pretrained(folder)
    model.to(device).eval().requires_grad_(False)
    model.generation_config.pad_token_id = 0
    return LoadedModel(model=model, tokenizer=tiny_tokenizer(), spec="random-1b", source=str(folder))


def export_once(folder: Path, dirs: Path) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of one streaming export, measured as the CPU benchmark measures it."""
    from benchmarks.bench_streaming_export import run_export

    return run_export(folder, dirs, folder.parent / (folder.name + "-export"), in_memory=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/refusal-atlas-gpu-check"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--device", default="cuda", help="cuda (the check); cpu only to smoke-test the script")
    parser.add_argument(
        "--layers", type=int, default=SHAPE["num_hidden_layers"], help="fewer layers: a smaller smoke test"
    )
    args = parser.parse_args()
    SHAPE["num_hidden_layers"] = args.layers
    if args.device == "cuda" and not torch.cuda.is_available():
        print("NO CUDA DEVICE: nothing measured")
        raise SystemExit(3)
    from refusal_core.activations.extract import extract_activations
    from refusal_core.directions.base import DirectionSet
    from refusal_core.generation import GenerationSettings, generate_completions
    from refusal_core.interventions.hooks import ablate
    from refusal_core.model.forward import encode_prompts
    from refusal_core.prompts.chat import ChatFormat, format_prompts

    loaded = build(args.folder, args.device)
    params = sum(p.numel() for p in loaded.model.parameters())
    texts = prompts(args.prompts)
    formatted = format_prompts(loaded.tokenizer, texts, ChatFormat())
    direction = torch.randn(1, SHAPE["hidden_size"], generator=torch.Generator().manual_seed(7))
    settings = GenerationSettings(max_new_tokens=args.new_tokens, batch_size=args.batch_size)

    def bare_forward() -> None:
        with torch.no_grad():
            for start in range(0, len(formatted), args.batch_size):
                loaded.model.base_model(
                    **encode_prompts(loaded, formatted[start : start + args.batch_size]), use_cache=False
                )

    def extraction() -> None:
        extract_activations(loaded, texts, positions=range(-5, 0), batch_size=args.batch_size, use_cache=False)

    def plain_generation() -> None:
        generate_completions(loaded, texts[: args.batch_size], settings=settings)

    def ablated_generation() -> None:
        with ablate(loaded.model, direction):
            generate_completions(loaded, texts[: args.batch_size], settings=settings)

    cases = {
        "bare forward": bare_forward,
        "extraction": extraction,
        "plain generation": plain_generation,
        "hook-ablated generation": ablated_generation,
    }
    for run in cases.values():  # warm-up: kernels, allocator
        run()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            seconds[name].append(synchronized(cases[name]))
            print(f"repeat {repeat + 1} {name}: {seconds[name][-1]:.3f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    ratios = {
        "extraction / bare forward": medians["extraction"] / medians["bare forward"],
        "hook-ablated / plain generation": medians["hook-ablated generation"] / medians["plain generation"],
    }
    dirs = args.folder.parent / (args.folder.name + "-dirs")
    DirectionSet(direction, ("d",), ({"method": "gpu_check"},)).save(dirs)
    weights = sum(p.stat().st_size for p in args.folder.glob("model*.safetensors"))
    export_seconds, peak = export_once(args.folder, dirs)
    export = {
        "seconds": export_seconds,
        "peak_rss_bytes": peak,
        "weights_bytes": weights,
        "peak_over_weights": peak / weights,
    }
    for name, value in ratios.items():
        print(f"RATIO {name}: {value:.3f}")
    print(
        f"MEASURE streaming export: {export_seconds:.1f} s, peak RSS {peak / 1e9:.2f} GB = {peak / weights:.2f}x the weights ({weights / 1e9:.2f} GB)"
    )
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    print(
        json.dumps(
            {
                "device": device,
                "torch": torch.__version__,
                "params": params,
                "dtype": "bfloat16",
                "repeats": args.repeats,
                "seconds": seconds,
                "medians": medians,
                "ratios": ratios,
                "export": export,
            }
        )
    )


if __name__ == "__main__":
    main()
