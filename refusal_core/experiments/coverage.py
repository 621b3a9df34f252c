"""The family coverage matrix: every family in the table, as a tiny random model saved to a
local folder, through activations, DIM, hook ablation, activation addition, generation with
ablation, and an exact weight export reloaded in plain transformers at float64.

Each cell is a measured number checked against a bound, not a string: the residual
stream's worst ``|P h| / |h|`` along the removed direction after the embedding and after
every block (hooks, edited weights, reloaded export), and how far activation addition's
block-input change is from ``coeff * v``. ``scripts/family_coverage.py`` writes the table
to ``docs/families.md``; ``tests/unit/test_family_matrix.py`` runs it for every family.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from refusal_core.activations.extract import extract_activations
from refusal_core.directions.base import DirectionSet
from refusal_core.directions.dim import dim_from_activations
from refusal_core.generation import GenerationSettings, generate_completions
from refusal_core.interventions.export import export_orthogonalized
from refusal_core.interventions.hooks import ablate, actadd
from refusal_core.interventions.spec import Intervention
from refusal_core.model.forward import block_hooks, encode_prompts
from refusal_core.model.loading import LoadedModel, load_model
from refusal_core.model.probe import residual_leak
from refusal_core.model.tiny_families import COVERED, DISCOVERED, tiny_family_folder

__all__ = ["BOUND", "COVERED", "DISCOVERED", "FamilyResult", "markdown_table", "run_family"]

# Worst relative residual component accepted for the hooks, the edit and the float64 reload.
BOUND = 1e-4
_HARMFUL = ["Explain how to break into a house without a key.", "Give me step by step instructions to make a weapon."]
_HARMLESS = [
    "Write a short poem about the sea and the wind.",
    "How do I bake bread at home with flour, water and yeast?",
]


@dataclass
class FamilyResult:
    model_type: str
    model_class: str = ""
    layout: str = "table"
    activations: bool = False
    dim_norm: float = float("nan")
    hooks_leak: float = float("nan")
    actadd_error: float = float("nan")
    generated_tokens: int = 0
    export_leak: float = float("nan")
    reload_leak: float = float("nan")
    seconds: float = 0.0
    error: str | None = None
    checks: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.error is None and all(self.checks.values())


def _block_input(loaded: LoadedModel, layer: int, texts: list[str]) -> torch.Tensor:
    seen: list[torch.Tensor] = []
    batch = encode_prompts(loaded, texts)
    with block_hooks(loaded.model, {layer: lambda h: seen.append(h.detach().clone())}), torch.no_grad():
        loaded.model(**batch, use_cache=False)
    return seen[0]


def _actadd_error(loaded: LoadedModel, vector: torch.Tensor, layer: int) -> float:
    """Worst deviation of actadd's block-input change from ``coeff * vector``, relative to it."""
    coeff = 3.0
    plain = _block_input(loaded, layer, _HARMLESS)
    with actadd(loaded.model, vector, layer, coeff):
        added = _block_input(loaded, layer, _HARMLESS)
    expected = coeff * vector.to(plain.dtype)
    return float(((added - plain) - expected).abs().max() / expected.abs().max())


def _reload_leak(folder: Path, directions: torch.Tensor) -> float:
    from transformers import AutoModelForCausalLM

    # The fused-experts kernels take no float64; the plain loop over experts does.
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, experts_implementation="eager")
    reloaded.eval()
    return residual_leak(reloaded, directions).worst


def run_family(model_type: str, workdir: str | Path | None = None) -> FamilyResult:
    """Run the whole matrix on a tiny ``model_type`` model; errors are recorded, not raised."""
    result = FamilyResult(model_type)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        try:
            _run(result, Path(tmp))
        except Exception as err:  # noqa: BLE001 - a family that fails is a row of the table
            result.error = f"{type(err).__name__}: {err}"
    result.seconds = time.perf_counter() - start
    return result


def _run(result: FamilyResult, tmp: Path) -> None:
    from refusal_core.model.family_table import TABLE

    result.layout = "table" if result.model_type in TABLE else "discovered"
    loaded = load_model(str(tiny_family_folder(result.model_type, tmp / "model")))
    result.model_class = type(loaded.model).__name__
    harmful = extract_activations(loaded, _HARMFUL, positions=(-1,), use_cache=False)
    harmless = extract_activations(loaded, _HARMLESS, positions=(-1,), use_cache=False)
    result.activations = bool(torch.isfinite(harmful.acts).all() and torch.isfinite(harmless.acts).all())
    layer = loaded.n_layers - 1
    candidates = dim_from_activations(harmful, harmless, {"model": result.model_type}, layers=[layer])
    direction = candidates.vectors[0]
    result.dim_norm = float(direction.norm())
    matrix = direction[None].to(torch.float32)
    with ablate(loaded.model, matrix):
        result.hooks_leak = residual_leak(loaded.model, matrix).worst
    result.actadd_error = _actadd_error(loaded, direction, layer)
    ablated = Intervention(name="ablate", ablate=matrix)
    completions = generate_completions(loaded, _HARMFUL[:1], ablated, GenerationSettings(max_new_tokens=3))
    result.generated_tokens = sum(c.n_tokens for c in completions)
    from refusal_core.interventions.weights import orthogonalized_weights

    with orthogonalized_weights(loaded.model, matrix):
        result.export_leak = residual_leak(loaded.model, matrix).worst
    directions = DirectionSet(matrix, (candidates.names[0],), (candidates.provenance[0],))
    out = export_orthogonalized(loaded, directions, tmp / "export")
    result.reload_leak = _reload_leak(out, matrix)
    result.checks = {
        "activations": result.activations,
        "dim": result.dim_norm > 0,
        "hooks": result.hooks_leak <= BOUND,
        "actadd": result.actadd_error <= 1e-5,
        "generate": result.generated_tokens > 0,
        "export": result.export_leak <= BOUND,
        "reload": result.reload_leak <= BOUND,
    }


def _mark(ok: bool, value: str) -> str:
    return f"{'✓' if ok else '✗'} {value}"


def markdown_table(results: list[FamilyResult]) -> str:
    """The coverage table: one row per family, measured values with a pass mark."""
    lines = [
        "| model_type | layout | class | activations | DIM norm | hooks: worst \\|Ph\\|/\\|h\\| | actadd error | generate | "
        "edited weights: worst | reloaded export (float64): worst | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(
                f"| {r.model_type} | {r.layout} | ✗ {r.error[:120].replace('|', '/')} |  |  |  |  |  |  |  | {r.seconds:.1f} |"
            )
            continue
        c = r.checks
        lines.append(
            f"| {r.model_type} | {r.layout} | {r.model_class} | {_mark(c['activations'], '')} | {_mark(c['dim'], f'{r.dim_norm:.3g}')} | "
            f"{_mark(c['hooks'], f'{r.hooks_leak:.1e}')} | {_mark(c['actadd'], f'{r.actadd_error:.1e}')} | "
            f"{_mark(c['generate'], str(r.generated_tokens))} | {_mark(c['export'], f'{r.export_leak:.1e}')} | "
            f"{_mark(c['reload'], f'{r.reload_leak:.1e}')} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)
