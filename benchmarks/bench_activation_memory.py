"""Peak memory of activation extraction: 2 layers against all layers, streamed against held.

The model is a random-weight Llama (width 256, MLP 512, 24 layers, the tiny chat
tokenizer), built from transformers' config with seeded normal weights and saved once as
float32 safetensors into ``--folder`` (default ``/tmp/refusal-atlas-act-mem``). Each case
runs in a fresh subprocess, which loads the model, warms up with one extraction of one
batch (so the forward pass's own memory is counted before the baseline), resets the
peak-RSS counter (``/proc/self/clear_refs``), extracts ``--prompts`` prompts at every
post-instruction position and reports ``VmHWM - VmRSS before`` as the extraction's peak:

- ``all, held``: every layer (0..24), the result in memory (``use_cache=False``);
- ``2 layers, held``: layer numbers 8 and 16 only (``layers=[8, 16]``), in memory;
- ``all, streamed``: every layer, streamed into a fresh cache folder and mapped back.

It prints each case's peak and the result's size, then the ratios
``RATIO 2 layers / all layers (held)`` and ``RATIO streamed / held (all layers)``.

Run from the repository root: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_activation_memory.py``
(about a minute on the shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.shapes import TINYLLAMA  # noqa: E402

# A small copy of the benchmarks' shape: the same tokens and layout, 24 narrow blocks.
SHAPE = dict(
    TINYLLAMA,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=24,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=512,
)
CASES = {"all, held": (None, False), "2 layers, held": ([8, 16], False), "all, streamed": (None, True)}


def build(folder: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from refusal_core.model.tiny import tiny_tokenizer

    if (folder / "config.json").is_file():
        return
    tokenizer = tiny_tokenizer()
    config = AutoConfig.for_model("llama", **{**SHAPE, "vocab_size": len(tokenizer)})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.05)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(folder: str, case: str, n_prompts: int, batch_size: int) -> None:
    """One case in this process: print a JSON line with its peak growth and the result's bytes."""
    from refusal_core.activations.extract import extract_activations
    from refusal_core.model.loading import load_model

    layers, streamed = CASES[case]
    loaded = load_model(folder)
    prompts = [f"Question {i}: how do I bake bread number {i} at home?" for i in range(n_prompts)]
    extract_activations(loaded, prompts[:batch_size], batch_size=batch_size, use_cache=False, layers=layers)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status("VmRSS")
    acts = extract_activations(loaded, prompts, batch_size=batch_size, use_cache=streamed, layers=layers)
    peak = _status("VmHWM")
    print(json.dumps({"case": case, "growth": peak - before, "peak": peak, "result": acts.acts.numel() * 4}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default="/tmp/refusal-atlas-act-mem")
    parser.add_argument("--prompts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.folder, args.child, args.prompts, args.batch_size)
        return
    folder = Path(args.folder)
    build(folder)
    results = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as cache:  # a fresh cache: every case computes
            env = {
                **os.environ,
                "REFUSAL_ATLAS_CACHE": cache,
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            }
            command = [sys.executable, __file__, "--folder", str(folder), "--prompts", str(args.prompts)]
            command += ["--batch-size", str(args.batch_size), "--child", case]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
        results[case] = json.loads(out.strip().splitlines()[-1])
        row = results[case]
        print(
            f"{case:16s} extraction peak +{row['growth'] / 1e6:7.1f} MB over the loaded model "
            f"(process peak {row['peak'] / 1e6:.0f} MB), result {row['result'] / 1e6:.1f} MB"
        )
    held, two = results["all, held"]["growth"], results["2 layers, held"]["growth"]
    streamed = results["all, streamed"]["growth"]
    print(f"RATIO 2 layers / all layers (held): {two / held:.3f}")
    print(f"RATIO streamed / held (all layers): {streamed / held:.3f}")
    print(json.dumps({"prompts": args.prompts, "batch_size": args.batch_size, "cases": results}))


if __name__ == "__main__":
    main()
