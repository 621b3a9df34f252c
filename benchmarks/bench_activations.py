"""Cost of activation extraction, of its on-disk cache and of loading the bundled model.

(a) ``extract_activations(use_cache=False)`` on one batch of built-in prompts against a
    bare ``model(**batch, output_hidden_states=True)`` on the same tokenized batch, and
    against ``model.base_model(...)`` (the same forward without the vocabulary projection,
    which is what extract_activations runs).
(b) A cache hit against a computed-and-saved result, in a temporary cache directory.
(c) Loading the bundled model in a fresh process: cold (GGUF dequantization and
    conversion into an empty cache directory) against cached (the same directory again).

Run from the repository root: ``.venv/bin/python benchmarks/bench_activations.py``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# First: it sets OMP_WAIT_POLICY before torch is imported.
import torch  # noqa: E402

from benchmarks._common import (  # noqa: E402
    REPO_ROOT,
    Case,
    Report,
    Timings,
    apply_threads,
    base_parser,
    interleave,
    median,
    timed,
)
from refusal_core.activations.extract import extract_activations  # noqa: E402
from refusal_core.model.fingerprint import weights_fingerprint  # noqa: E402
from refusal_core.model.forward import tokenize_prompts  # noqa: E402
from refusal_core.model.loading import BUNDLED_BASE, LoadedModel, load_model  # noqa: E402
from refusal_core.prompts.chat import format_prompts  # noqa: E402
from refusal_core.prompts.loaders import builtin  # noqa: E402

EXTRACT_GOAL = 1.10


def benchmark_prompts(n_prompts: int) -> list[str]:
    """Half harmful, half harmless built-in training prompts, in a fixed order."""
    harmful = builtin("harmful", "train").instructions[: n_prompts - n_prompts // 2]
    harmless = builtin("harmless", "train").instructions[: n_prompts // 2]
    return [*harmful, *harmless]


def bench_extract(loaded: LoadedModel, instructions: list[str], repeats: int, report: Report) -> None:
    """(a) The toolkit's extraction against bare forwards of the same tokenized batch."""
    texts = format_prompts(loaded.tokenizer, instructions)
    batch = tokenize_prompts(loaded.tokenizer, texts, loaded.device)
    n = len(instructions)
    report.note(f"(a) batch of {n} prompts, {batch['input_ids'].shape[1]} tokens after left padding")

    def bare_forward(module: torch.nn.Module) -> None:
        with torch.no_grad():
            module(**batch, output_hidden_states=True)

    cases = [
        Case(
            "extract_activations(no cache)",
            lambda: extract_activations(loaded, instructions, batch_size=n, use_cache=False),
        ),
        Case("model(**batch, hidden_states)", lambda: bare_forward(loaded.model)),
        Case("base_model(**batch, hidden_st.)", lambda: bare_forward(loaded.model.base_model)),
    ]
    report.add_times(interleave(cases, repeats))
    extract, full, base = (case.name for case in cases)
    goal, check = f"<= {EXTRACT_GOAL:.2f}", lambda ratio: ratio <= EXTRACT_GOAL
    report.compare("extract_vs_model_forward", extract, full, goal, check)
    report.compare("extract_vs_base_model_forward", extract, base, goal, check)


def bench_cache(loaded: LoadedModel, instructions: list[str], repeats: int, report: Report) -> None:
    """(b) Cache hit against compute-and-save, in a throw-away cache directory."""
    previous = os.environ.get("REFUSAL_ATLAS_CACHE")
    cache_root = Path(tempfile.mkdtemp(prefix="bench-acts-cache-"))
    os.environ["REFUSAL_ATLAS_CACHE"] = str(cache_root)
    n = len(instructions)

    def forget() -> None:
        shutil.rmtree(cache_root / "activations", ignore_errors=True)

    def hit() -> None:
        if not extract_activations(loaded, instructions, batch_size=n).from_cache:
            raise RuntimeError("expected a cache hit; the cache entry was not reused")

    try:
        # Seed the entry so a repeat that starts with the hit case finds it.
        extract_activations(loaded, instructions, batch_size=n)
        cases = [
            Case(
                "cache miss: compute + save",
                lambda: extract_activations(loaded, instructions, batch_size=n),
                setup=forget,
            ),
            Case("cache hit", hit),
        ]
        timings = interleave(cases, repeats, warmup=0)
        entry_bytes = sum(path.stat().st_size for path in (cache_root / "activations").glob("*.safetensors"))
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
        if previous is None:
            os.environ.pop("REFUSAL_ATLAS_CACHE", None)
        else:
            os.environ["REFUSAL_ATLAS_CACHE"] = previous
    report.add_times(timings)
    report.add_value("cache_entry_size", entry_bytes / 2**20, "MiB")
    miss_case, hit_case = (case.name for case in cases)
    report.compare("cache_hit_vs_compute", hit_case, miss_case, "< 1, lower is better", lambda ratio: ratio < 1)
    bench_first_fingerprint(loaded, report)


def bench_first_fingerprint(loaded: LoadedModel, report: Report) -> None:
    """The weights fingerprint that every cache lookup needs, first call in a process.

    It is memoised afterwards, so the timed hits above do not pay it; a freshly started
    app does, once per model; ``fingerprint.clear_memo()`` empties the memo.
    """
    from refusal_core.model import fingerprint

    fingerprint.clear_memo()
    seconds, _, _ = timed(lambda: weights_fingerprint(loaded.model))
    report.add_value("weights_fingerprint_first_call", seconds, "s")


_LOAD_SNIPPET = """
import json, sys, time
sys.path.insert(0, {root!r})
start = time.perf_counter()
import torch
if {threads} > 0:
    torch.set_num_threads({threads})
from refusal_core.model.loading import load_model
imported, cpu = time.perf_counter(), time.process_time()
load_model({spec!r})
done = {{"import_s": imported - start, "load_s": time.perf_counter() - imported, "load_cpu_s": time.process_time() - cpu}}
print("BENCH-JSON " + json.dumps(done))
"""


def load_in_subprocess(spec: str, cache_root: Path, threads: int) -> dict[str, float]:
    """Seconds to load ``spec`` in a fresh process: import, load_model (wall and CPU), whole process."""
    env = {**os.environ, "REFUSAL_ATLAS_CACHE": str(cache_root)}
    code = _LOAD_SNIPPET.format(root=str(REPO_ROOT), spec=spec, threads=int(threads))
    children_cpu = _children_cpu()
    wall, _, done = timed(lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True))
    if done.returncode != 0:
        raise RuntimeError(f"loading {spec} in a subprocess failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("BENCH-JSON "))
    return {
        **json.loads(line.removeprefix("BENCH-JSON ")),
        "process_s": wall,
        "process_cpu_s": _children_cpu() - children_cpu,
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_load(spec: str, repeats: int, threads: int, report: Report) -> None:
    """(c) Cold load (GGUF conversion into an empty cache) against cached load, in subprocesses."""
    if spec != BUNDLED_BASE:
        report.note(f"(c) skipped: the cold/cached comparison is defined for {BUNDLED_BASE} only")
        return
    cold: list[dict[str, float]] = []
    cached: list[dict[str, float]] = []
    for _ in range(repeats):
        cache_root = Path(tempfile.mkdtemp(prefix="bench-load-cache-"))
        try:
            cold.append(load_in_subprocess(spec, cache_root, threads))
            cached.append(load_in_subprocess(spec, cache_root, threads))
        finally:
            shutil.rmtree(cache_root, ignore_errors=True)
    timings = Timings()
    for label, runs in (("cold", cold), ("cached", cached)):
        for run in runs:
            timings.add(f"load {label}: load_model()", run["load_s"], run["load_cpu_s"])
            timings.add(f"load {label}: whole process", run["process_s"], run["process_cpu_s"])
    report.add_times(timings)
    report.add_value("import_refusal_core_and_torch", median([run["import_s"] for run in cold + cached]), "s")
    report.compare(
        "cold_load_vs_cached_load", "load cold: load_model()", "load cached: load_model()", "none, one-off cost"
    )


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument("--prompts", type=int, default=32, help="prompts in the batch (default: %(default)s)")
    parser.add_argument(
        "--load-repeats",
        type=int,
        default=1,
        help="cold/cached load pairs, ~0.5 GB written each (default: %(default)s)",
    )
    parser.add_argument("--skip-load", action="store_true", help="skip (c), the subprocess load comparison")
    args = parser.parse_args()
    apply_threads(args.threads)
    report = Report("bench_activations", vars(args))
    loaded = load_model(args.model)
    instructions = benchmark_prompts(args.prompts)
    bench_extract(loaded, instructions, args.repeats, report)
    bench_cache(loaded, instructions, args.repeats, report)
    if args.skip_load:
        report.note("(c) skipped (--skip-load)")
    else:
        bench_load(args.model, args.load_repeats, args.threads, report)
    report.print()
    report.write_json(args.json)


if __name__ == "__main__":
    main()
