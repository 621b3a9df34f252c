"""Why the residual self-check's tolerances are what they are: per dtype, the worst
residual component left by a correct weight edit, and by an edit whose family layout
forgets every MLP output projection (the failure the check exists to catch).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/probe_tolerance.py [model_type ...]

Tiny random models (``model/tiny_families.py``), one random direction.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from refusal_core.interventions.weights import _orthogonalize_  # noqa: E402
from refusal_core.model import families  # noqa: E402
from refusal_core.model.loading import load_model  # noqa: E402
from refusal_core.model.probe import residual_leak, tolerance  # noqa: E402
from refusal_core.model.tiny_families import tiny_family_folder  # noqa: E402


def worst(folder: str, dtype: str, broken: bool) -> float:
    loaded = load_model(folder, dtype=dtype)
    model_type = loaded.model.config.model_type
    family = families.FAMILIES[model_type]
    direction = torch.randn(1, loaded.d_model, generator=torch.Generator().manual_seed(0))
    if broken:
        writers = tuple(w for w in family.writers if w.group != "mlp") or (families.Writer(family.attn_write, "attn"),)
        families.FAMILIES[model_type] = replace(family, writers=writers)
    try:
        _orthogonalize_(loaded.model, direction, backups=None)  # the edit without its own check
    finally:
        families.FAMILIES[model_type] = family
    return residual_leak(loaded.model, direction).worst


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'model_type':12s} {'dtype':9s} {'tolerance':>9s} {'correct':>9s} {'no MLP writer':>13s}")
    for model_type in sys.argv[1:] or ["llama", "gemma2", "mixtral", "gpt_oss"]:
        with tempfile.TemporaryDirectory() as tmp:
            tiny_family_folder(model_type, tmp)
            for dtype in ("float32", "bfloat16", "float16"):
                ok, bad = worst(tmp, dtype, False), worst(tmp, dtype, True)
                limit = tolerance(getattr(torch, dtype))
                print(f"{model_type:12s} {dtype:9s} {limit:9.0e} {ok:9.2e} {bad:13.2e}", flush=True)


if __name__ == "__main__":
    main()
