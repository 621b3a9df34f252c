"""Peak extra memory of the weights fingerprint on a randomly initialized ~1B-parameter model.

The fingerprint (``refusal_core.model.fingerprint``) runs before every activation-cache
lookup. It sums each tensor in float64; done on the whole tensor at once, that copy is twice
the tensor's float32 size (a 128k x 4096 embedding: 4 GB). The streamed version converts
at most ``BLOCK_ELEMENTS`` values at a time.

How memory is measured: torch's CPU tensors are allocated with malloc, out of sight of
``tracemalloc``, so the process's resident set is measured instead. Before each call the
kernel's peak-RSS counter (VmHWM) is reset to the current RSS by writing ``5`` to
``/proc/self/clear_refs`` (Linux >= 4.0); after the call, VmHWM minus the RSS before is the
peak extra memory of that call, whatever allocator served it. The same measurement of the
previous whole-tensor formula, in the same process, shows that the method sees such copies.

The model is a Llama of TinyLlama's shape (22 layers, width 2048, MLP 5632, vocab 32000;
1.10B parameters, float32), built from its config and filled with seeded normal values.

Run from the repository root: ``.venv/bin/python benchmarks/bench_fingerprint.py`` (about
a minute and 5 GB of memory; ``--layers N`` for a smaller model).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.shapes import TINYLLAMA  # noqa: E402
from refusal_core.model import fingerprint  # noqa: E402
from tests.unit.test_fingerprint import whole_tensor_fingerprint  # noqa: E402  (the previous formula, the test's oracle)

GOAL = 0.10


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} is not in /proc/self/status")


def peak_extra_bytes(call) -> tuple[int, float, object]:
    """(peak RSS above the RSS before the call, seconds, result)."""
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _status_kb("VmRSS")
    if _status_kb("VmHWM") > before + 1024:
        raise RuntimeError("Could not reset the peak-RSS counter (VmHWM); this measurement needs Linux >= 4.0.")
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    return (_status_kb("VmHWM") - before) * 1024, seconds, result


def build_model(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**dict(TINYLLAMA, num_hidden_layers=layers))
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=generator)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model(args.layers)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(t.numel() for t in model.state_dict().values())
    print(
        f"model: {params / 1e9:.2f}B parameters, {weights / 2**30:.2f} GiB of weights (float32), "
        f"largest tensor {max(t.numel() for t in model.state_dict().values()) / 1e6:.1f}M values"
    )
    rows = []
    for label, call in (
        ("streamed (refusal_core)", lambda: fingerprint.weights_fingerprint(model)),
        ("whole-tensor float64 (previous)", lambda: whole_tensor_fingerprint(model)),
    ):
        fingerprint.clear_memo()
        extra, seconds, _ = peak_extra_bytes(call)
        rows.append((label, extra, seconds))
        print(
            f"{label:32s} peak extra {extra / 2**20:8.1f} MiB = {extra / weights:6.2%} of the weights, {seconds:5.1f} s"
        )
    fingerprint.clear_memo()
    _, _, first = peak_extra_bytes(lambda: fingerprint.weights_fingerprint(model))
    _, hit_seconds, second = peak_extra_bytes(lambda: fingerprint.weights_fingerprint(model))
    assert first == second
    print(f"memoised second call: {hit_seconds * 1000:.1f} ms")
    ratio = rows[0][1] / weights
    verdict = "met" if ratio < GOAL else "MISSED"
    print(
        f"RATIO fingerprint_peak_extra_over_weights = {ratio:.4f} (goal < {GOAL}, {verdict}; "
        f"previous formula {rows[1][1] / weights:.4f})"
    )


if __name__ == "__main__":
    main()
