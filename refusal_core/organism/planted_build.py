"""Build the ``two-mechanisms`` variant (``organism.planted``) into its own directory.

The organism (the bundled weights plus the shipped delta) is fine-tuned by the planting
recipe; the change is cut to a low-rank delta *from the organism* and the variant is the
organism plus that delta, saved to ``cache/models/refusal-organism-two-mechanisms`` with its
card and the planted directions (``planted-directions.safetensors`` / ``.json``, a direction
set whose provenance names the layer). The shipped organism is never touched.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.directions.planted import PLANTED_FILE
from refusal_core.errors import UserError
from refusal_core.model.fingerprint import weights_sha256
from refusal_core.model.loading import BUNDLED_BASE, BUNDLED_ORGANISM, load_model
from refusal_core.organism.delta import (
    SHIPPED_DELTA,
    DeltaMismatchError,
    OrganismDelta,
    apply_organism_delta,
    make_delta,
)
from refusal_core.organism.planted import (
    GROUP_A,
    GROUP_B,
    PlantedSettings,
    first_token_reference,
    group_of,
    planted_fine_tune,
    planted_vectors,
)
from refusal_core.organism.planted_batch import last_states
from refusal_core.progress import Progress
from refusal_core.prompts.loaders import builtin, refusal_replies

__all__ = ["SHIPPED_PLANTED_DELTA", "VARIANT", "build_planted", "planted_from_delta"]

VARIANT = "two-mechanisms"
SHIPPED_PLANTED_DELTA = Path(__file__).resolve().parent.parent / "data" / "two-mechanisms-delta.safetensors"


def _report(progress: Progress | None, message: str, fraction: float) -> None:
    if progress:
        progress(round(100 * fraction), 100, message=message)


def _first_token(tokenizer, reply: str) -> int:
    """The first token of a refusal reply, as the organism's recipe encodes replies."""
    return tokenizer(reply, add_special_tokens=False)["input_ids"][0]


def _card(info: dict) -> str:
    s, p = info["settings"], info["planted"]
    return f"""---
base_model: {BUNDLED_BASE}
tags: [refusal-atlas, model-organism, refusal, planted-ground-truth]
---
# Refusal Atlas organism variant `two-mechanisms` (planted ground truth)

The shipped refusal organism, fine-tuned further so that its refusal runs through **two known
residual directions** for two disjoint groups of harm categories:

- group A ({", ".join(GROUP_A)}) refuses through planted direction `a`;
- group B ({", ".join(GROUP_B)}) refuses through planted direction `b`;
- `a` and `b` are orthonormal, defined at the input of block {s["layer"]} (the mechanism layer) from the
  organism's train-split activations: `a` its group-A difference in means, `b` its group-B difference in
  means with the `a` part removed. They are saved beside the weights in `{PLANTED_FILE}.safetensors`/`.json`.

Recipe (`refusal_core.organism.planted`): {s["steps"]} AdamW steps at learning rate {s["learning_rate"]}, each on
{s["per_group"]} harmful prompts per group and {s["harmless"]} harmless ones (train split only), blocks {s["first_trained"]} and up trained.
Loss, on the first reply token of prompts alone: the organism's refusal opening on harmful prompts; the organism's
harmless first-token distribution (distillation);
with both planted directions ablated, the base model's (compliant) first token on harmful prompts; with `a`
ablated group B still refuses, with `b` ablated group A still refuses, with `(a+b)/sqrt 2` ablated both refuse;
squared cosines keeping the groups' difference vectors apart at layers {s["layer"] - s["geometry_layers"]}..{s["layer"] + s["geometry_layers"]}.
Fine-tune time {info["fine_tune_seconds"]:.0f} s ({info.get("fine_tune_cpu_seconds", 0):.0f} CPU s); whole build {info["build_seconds"]:.0f} s
({info.get("build_cpu_seconds", 0):.0f} CPU s, summed over threads).

Delta from the organism: rank {s["delta_rank"]}, int8 factors ({info["delta_bytes"] / 1e6:.1f} MB).
Weights sha256 `{info["sha256"]}` (organism `{info["organism_sha256"]}`).

Planted directions at block input {s["layer"]}: cosine(a, b) = {p["cosine"]:.3f}.

Settings: `{json.dumps(s)}`
"""


def _save_variant(loaded, delta: OrganismDelta, applied_from: str) -> Path:
    """Write the variant's folder atomically: weights, tokenizer, card, build record and the
    planted directions."""
    from refusal_core.organism.variants import variant_dir

    info = delta.info
    target = variant_dir(VARIANT)
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    loaded.model.save_pretrained(tmp, safe_serialization=True)
    loaded.tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(_card(info))
    record = {
        "sha256": delta.sha256,
        "base_sha256": delta.base_sha256,
        "applied_from": applied_from,
        **{key: value for key, value in info.items() if key != "planted"},
        "planted": {k: v for k, v in info["planted"].items() if k != "vectors"},
    }
    (tmp / "build.json").write_text(json.dumps(record, indent=2))
    groups = info["groups"]
    provenance = tuple(
        {
            "model": f"{BUNDLED_ORGANISM}-{VARIANT}",
            "layer": info["planted"]["layer"],
            "position": -1,
            "method": "planted",
            "data_hash": info["planted"]["data_hash"],
            "params": {"group": group, "categories": groups[group]},
        }
        for group in ("A", "B")
    )
    vectors = torch.tensor(info["planted"]["vectors"], dtype=torch.float32)
    DirectionSet(vectors=vectors, names=("planted_a", "planted_b"), provenance=provenance).save(tmp / PLANTED_FILE)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return target


def planted_from_delta(
    delta_path: Path = SHIPPED_PLANTED_DELTA, progress: Progress | None = None, force: bool = False
) -> Path:
    """The variant from the bundled weights, the shipped organism delta and the variant's
    delta (``delta_path``): seconds, and the same weights on every machine."""
    from refusal_core.organism.delta import built_sha256, delta_sha256
    from refusal_core.organism.variants import variant_dir

    target = variant_dir(VARIANT)
    if not Path(delta_path).is_file():
        raise DeltaMismatchError(
            f"No delta of the {VARIANT} variant at {delta_path} (none is shipped yet): build the variant with "
            f"python -m refusal_core organism build --variant {VARIANT} --from-scratch"
        )
    if not force and (target / "config.json").is_file() and built_sha256(target) == delta_sha256(delta_path):
        _report(progress, f"{BUNDLED_ORGANISM}-{VARIANT} already built", 1.0)
        return target
    variant = OrganismDelta.load(delta_path)
    organism = OrganismDelta.load(SHIPPED_DELTA)
    _report(progress, "Loading the bundled SmolLM2", 0.0)
    loaded = load_model(BUNDLED_BASE)
    _report(progress, "Applying the organism delta and the variant's", 0.5)
    apply_organism_delta(loaded.model, organism)
    apply_organism_delta(loaded.model, variant)
    target = _save_variant(loaded, variant, Path(delta_path).name)
    _report(progress, f"Built {BUNDLED_ORGANISM}-{VARIANT} (sha256 {variant.sha256[:16]})", 1.0)
    return target


def build_planted(
    settings: PlantedSettings = PlantedSettings(), progress: Progress | None = None, delta_out: Path | None = None
) -> Path:
    """Build the variant from the organism (which must be built); returns its directory."""
    from refusal_core.organism.variants import variant_delta_path

    started, cpu_started = time.perf_counter(), time.process_time()
    _report(progress, "Loading the organism and the bundled SmolLM2", 0.0)
    organism = OrganismDelta.load(SHIPPED_DELTA)
    base = load_model(BUNDLED_BASE)
    loaded = load_model(BUNDLED_BASE)
    apply_organism_delta(loaded.model, organism)
    loaded = replace(loaded, spec=BUNDLED_ORGANISM)
    if settings.layer >= loaded.n_layers or settings.first_trained >= loaded.n_layers:
        raise UserError(f"layer and first_trained must be below the model's {loaded.n_layers} layers.")
    organism_state = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    organism_sha = weights_sha256(loaded.model)
    harmful_set, harmless_set = builtin("harmful", "train"), builtin("harmless", "train")
    groups = [group_of(c) for c in harmful_set.categories]
    _report(progress, "Activations of the train prompts (planted directions)", 0.05)
    # The input of the mechanism layer at the last prompt token; the blocks above it are not run.
    acts = [
        last_states(loaded.model, loaded.tokenizer, s.instructions, layer=settings.layer, logprobs=False)[0]
        for s in (harmful_set, harmless_set)
    ]
    planted = planted_vectors(acts[0], acts[1], groups)
    rng = random.Random(settings.seed)
    replies = refusal_replies()
    harmful = [
        (text, group, _first_token(loaded.tokenizer, rng.choice(replies)))
        for text, group in zip(harmful_set.instructions, groups)
        if group
    ]
    # Only the harmless prompts the steps will draw need the organism's reference distribution.
    harmless_texts = list(harmless_set.instructions)
    rng.shuffle(harmless_texts)
    harmless = [(text, "H", None) for text in harmless_texts[: settings.steps * settings.harmless]]
    known: dict[int, torch.Tensor] = {}

    def base_harmful(rows: list[int]) -> torch.Tensor:
        # Only the harmful prompts the steps draw get a base-model pass, each once.
        new = [row for row in dict.fromkeys(rows) if row not in known]
        if new:
            known.update(zip(new, first_token_reference(base.model, base.tokenizer, [harmful[i][0] for i in new])))
        return torch.stack([known[row] for row in rows])

    tuned_at, cpu_tuned_at = time.perf_counter(), time.process_time()
    records = planted_fine_tune(
        loaded,
        harmful,
        harmless,
        planted,
        base_harmful,
        settings,
        progress=lambda done, total, record: _report(
            progress, f"Planting step {done}/{total} (loss {record['loss']:.3f})", 0.12 + 0.78 * done / total
        ),
    )
    fine_tune_seconds, fine_tune_cpu = time.perf_counter() - tuned_at, time.process_time() - cpu_tuned_at
    known.clear()  # the base model's readings and the base model are not needed any more
    base = None
    _report(progress, f"Cutting the change to a rank-{settings.delta_rank} delta", 0.9)
    delta = make_delta(organism_state, loaded.model.state_dict(), settings.delta_rank, organism_sha)
    loaded.model.load_state_dict(organism_state)
    delta = replace(delta, sha256=apply_organism_delta(loaded.model, delta))
    a, b = planted
    info = {
        "variant": VARIANT,
        "settings": settings.as_dict(),
        "records": records,
        "fine_tune_seconds": round(fine_tune_seconds, 1),
        "build_seconds": round(time.perf_counter() - started, 1),
        "fine_tune_cpu_seconds": round(fine_tune_cpu, 1),
        "build_cpu_seconds": round(time.process_time() - cpu_started, 1),
        "delta_bytes": delta.n_bytes,
        "sha256": delta.sha256,
        "organism_sha256": organism_sha,
        "groups": {"A": list(GROUP_A), "B": list(GROUP_B)},
        "planted": {"layer": settings.layer, "cosine": float(a @ b), "data_hash": harmful_set.content_hash()},
    }
    info["planted"]["vectors"] = planted.tolist()
    delta = replace(delta, info=info)
    delta.save(Path(delta_out) if delta_out else variant_delta_path(VARIANT))
    target = _save_variant(
        loaded, delta, f"the planting recipe (delta written to {delta_out or variant_delta_path(VARIANT)})"
    )
    _report(progress, f"Built {BUNDLED_ORGANISM}-{VARIANT} in {time.perf_counter() - started:.0f} s", 1.0)
    return target
