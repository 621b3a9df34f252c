"""The streaming export against today's in-memory export, on a model several shards large.

The model is a random-weight Llama of 657M parameters (width 2048, MLP 5632, 10 layers,
vocabulary 35000, untied), built from transformers' config with seeded normal weights and
saved once as float32 shards of at most 400 MB (7 files, 2.6 GB) into ``--folder``
(default ``/tmp/refusal-atlas-657m``, never the repository). Each export runs as
``python -m refusal_core export-model`` in a fresh subprocess, ``--in-memory`` for today's
path; each subprocess's peak resident memory comes from ``/usr/bin/time -f %M``, its time
from the wall clock around it. The two exports alternate
(``--repeats`` rounds, streaming first in odd rounds), after one read of the shards warms
the page cache for both.

It prints, from one run: the time ratio streaming / in-memory (medians), each peak as a
ratio to the weights' bytes on disk, the largest absolute difference between the two
exports' tensors (read one tensor at a time), and the worst ``|h.d|/|h|`` of the streamed
export reloaded in plain transformers in float64 (every layer's output, 2 x 16 random tokens).
Goals: peak <= 0.35x the weights, time <= 1.2x the in-memory export, |h.d|/|h| <= 1e-4.

Run from the repository root: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_streaming_export.py``
(about 9 minutes on the shared 2-core machine, plus 1 minute to build the model the first time;
about 6 GB of memory at its peak, the float64 reload; 8 GB of disk in /tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.shapes import TINYLLAMA  # noqa: E402

SHAPE = dict(TINYLLAMA, num_hidden_layers=10, num_key_value_heads=32, vocab_size=35000)


def build(folder: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    from refusal_core.model.tiny import tiny_tokenizer

    if (folder / "config.json").is_file():
        return
    print(f"Building the 657M random Llama into {folder} (once) ...", flush=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **SHAPE), dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.02)
    model.save_pretrained(folder, max_shard_size="400MB")
    tiny_tokenizer().save_pretrained(folder)
    del model


def run_export(folder: Path, dirs: Path, out: Path, in_memory: bool) -> tuple[float, int]:
    """(seconds, peak RSS bytes) of one export in a fresh subprocess.

    The peak comes from ``/usr/bin/time -f %M``, a small process that forks the export:
    Linux counts a child's resident set from before its exec too, so a child forked
    straight from this (large) process would report this process's own peak.
    """
    record = out.parent / (out.name + ".maxrss")
    argv = [
        "/usr/bin/time",
        "-f",
        "%M",
        "-o",
        str(record),
        sys.executable,
        "-m",
        "refusal_core",
        "export-model",
        "--model",
        str(folder),
        "--ablate",
        str(dirs),
        "--out",
        str(out),
        "--overwrite",
        "--json",
    ] + (["--in-memory"] if in_memory else [])
    started = time.perf_counter()
    child = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        raise SystemExit(f"export failed ({argv}):\n{child.stdout}\n{child.stderr[-2000:]}")
    return seconds, int(record.read_text().split()[-1]) * 1024  # kilobytes


def max_difference(a: Path, b: Path) -> float:
    from safetensors import safe_open

    def where(folder: Path) -> dict[str, Path]:
        found = {}
        for path in folder.glob("model*.safetensors"):
            with safe_open(path, framework="pt") as handle:
                found.update({name: path for name in handle.keys()})
        return found

    left, right = where(a), where(b)
    if set(left) != set(right):
        raise SystemExit(f"the exports hold different tensors: {sorted(set(left) ^ set(right))}")
    worst = 0.0
    for name, path in left.items():
        with safe_open(path, framework="pt") as x, safe_open(right[name], framework="pt") as y:
            worst = max(worst, float((x.get_tensor(name).double() - y.get_tensor(name).double()).abs().max()))
    return worst


def worst_cosine(folder: Path, directions: torch.Tensor) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64)
    outputs: list[torch.Tensor] = []
    hooks = [
        layer.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
        for layer in model.model.layers
    ]
    ids = torch.randint(3, SHAPE["vocab_size"], (2, 16), generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            outputs.append(model.get_input_embeddings()(ids))
            model.model(input_ids=ids)
    finally:
        for hook in hooks:
            hook.remove()
    units = torch.nn.functional.normalize(directions.double(), dim=-1)
    return max(float(((h @ units.T).abs() / h.norm(dim=-1, keepdim=True)).max()) for h in outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/refusal-atlas-657m"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from refusal_core.directions.base import DirectionSet

    build(args.folder)
    weights = sum(p.stat().st_size for p in args.folder.glob("model*.safetensors"))
    vectors = torch.randn(2, SHAPE["hidden_size"], generator=torch.Generator().manual_seed(7))
    dirs = args.folder.parent / (args.folder.name + "-dirs")
    DirectionSet(vectors, ("a", "b"), ({"method": "bench"}, {"method": "bench"})).save(dirs)
    for path in args.folder.glob("model*.safetensors"):  # warm the page cache for both exports alike
        with open(path, "rb") as handle:
            while handle.read(64 << 20):
                pass
    outs = {
        "streaming": args.folder.parent / (args.folder.name + "-streamed"),
        "in-memory": args.folder.parent / (args.folder.name + "-inmemory"),
    }
    samples: dict[str, list[tuple[float, int]]] = {"streaming": [], "in-memory": []}
    for round_ in range(args.repeats):
        order = ["streaming", "in-memory"] if round_ % 2 == 0 else ["in-memory", "streaming"]
        for case in order:
            seconds, peak = run_export(args.folder, dirs, outs[case], in_memory=case == "in-memory")
            samples[case].append((seconds, peak))
            print(f"round {round_ + 1} {case}: {seconds:.1f} s, peak RSS {peak / 1e9:.2f} GB", flush=True)
    time_s = {case: statistics.median(s for s, _ in runs) for case, runs in samples.items()}
    peak = {case: max(p for _, p in runs) for case, runs in samples.items()}
    difference = max_difference(outs["streaming"], outs["in-memory"])
    cosine = worst_cosine(outs["streaming"], vectors)
    n_shards = len(list(args.folder.glob("model*.safetensors")))
    report = {
        "weights_bytes": weights,
        "shards": n_shards,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "seconds": time_s,
        "peak_rss_bytes": peak,
        "time_ratio_streaming_over_in_memory": time_s["streaming"] / time_s["in-memory"],
        "peak_over_weights": {case: value / weights for case, value in peak.items()},
        "max_abs_difference": difference,
        "worst_residual_cosine_float64": cosine,
    }
    print(f"weights on disk: {weights / 1e9:.2f} GB in {n_shards} shards")
    for case in samples:
        print(
            f"{case:>10}: median {time_s[case]:.1f} s, peak RSS {peak[case] / 1e9:.2f} GB = {peak[case] / weights:.2f}x the weights"
        )
    print(f"RATIO time streaming / in-memory: {report['time_ratio_streaming_over_in_memory']:.2f} (goal <= 1.2)")
    print(f"RATIO peak streaming / weights: {report['peak_over_weights']['streaming']:.2f} (goal <= 0.35)")
    print(f"max |streaming - in-memory| over all tensors: {difference:.3g}")
    print(f"worst |h.d|/|h| of the streamed export reloaded in float64: {cosine:.3g} (goal <= 1e-4)")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
