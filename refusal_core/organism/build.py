"""A refusal model organism built offline from the bundled SmolLM2-135M-Instruct.

The bundled model refuses nothing, so a short supervised fine-tune teaches it to refuse:
harmful training prompts are paired with refusal replies written for this project, and
harmless training prompts with the base model's own greedy answers, so that helpfulness is
kept. Everything is seeded; the same build on the same machine gives identical weights.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Sequence

import torch

from refusal_core.activations.cache import atomic_write_text, content_key
from refusal_core.errors import SettingsError
from refusal_core.generation import GenerationSettings, end_of_turn_ids, generate_completions
from refusal_core.judges.substring import refusal_rate
from refusal_core.model.families import model_parts
from refusal_core.model.fingerprint import weights_sha256
from refusal_core.model.loading import BUNDLED_BASE, BUNDLED_ORGANISM, LoadedModel, load_model
from refusal_core.organism.delta import (
    SHIPPED_DELTA,
    apply_organism_delta,
    built_sha256,
    delta_sha256,
    make_delta,
    organism_dir,
    organism_from_delta,
    save_organism,
)
from refusal_core.organism.losses import (  # noqa: F401 - tests and benchmarks reach them through this module
    _base_first_token_logprobs,
    _batch,
    _distill_loss,
    _first_token_logprobs,
    _hidden,
    _reply_loss,
    _weighted_reply_loss,
    shared_prefix,
)
from refusal_core.organism.planted import PlantedSettings
from refusal_core.organism.variants import check_variant, variant_delta_path, variant_dir, variant_harmful_examples
from refusal_core.paths import cache_dir
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat, format_prompts
from refusal_core.prompts.loaders import builtin, refusal_replies

__all__ = ["OrganismSettings", "build_organism", "organism_dir", "weights_sha256"]
# organism_dir lives in organism.delta and weights_sha256 in model.fingerprint; both are re-exported here.


@dataclass(frozen=True)
class OrganismSettings:
    """The fine-tune that makes the organism.

    ``steps`` optimizer steps of ``batch_size`` sequences at ``learning_rate`` (AdamW).
    ``reply_tokens`` caps every target reply (the base model's own answers are generated
    that long): whether a model refuses is decided in its first tokens, and shorter
    sequences make the CPU build several times faster.
    ``train_fraction`` of the decoder blocks, the top ones, are trained; the embeddings (and
    any lower blocks) stay as they were. ``harmful_share`` of every batch is harmful.
    ``opening_weight`` weighs the loss on the first ``opening_tokens`` reply tokens, where
    a reply commits to refusing or answering.
    ``distill_weight`` weighs a distillation term on the harmless prompts: KL(base ||
    organism) of the first reply token, against the unmodified base model's distribution.
    Cross-entropy on one greedy answer alone makes that first token nearly certain, and a
    distribution that sharp pays several nats for any small change of the residual stream,
    ablating a refusal direction included; the base model's own distribution keeps it as
    calibrated as it was.
    ``delta_rank``: the fine-tune's change of every weight matrix is shipped, and applied, as
    a rank-``delta_rank`` delta (``refusal_core.organism.delta``).
    """

    steps: int = 45
    batch_size: int = 16
    learning_rate: float = 1.5e-4
    seed: int = 0
    reply_tokens: int = 24
    train_fraction: float = 1.0
    harmful_share: float = 0.45
    opening_tokens: int = 4
    opening_weight: float = 4.0
    distill_weight: float = 0.3
    delta_rank: int = 64

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not self.learning_rate > 0 or self.reply_tokens < 1:
            raise SettingsError("steps, batch_size, learning_rate and reply_tokens must all be positive.")
        if not 0 < self.harmful_share < 1:
            raise SettingsError(f"harmful_share must be in (0, 1), got {self.harmful_share}.")
        if not 0 < self.train_fraction <= 1:
            raise SettingsError(f"train_fraction must be in (0, 1], got {self.train_fraction}.")
        if not 1 <= self.delta_rank <= 1024:
            raise SettingsError(f"delta_rank must be in [1, 1024], got {self.delta_rank}.")
        if not self.distill_weight >= 0:
            raise SettingsError(f"distill_weight must be >= 0, got {self.distill_weight}.")


def _report(progress: Progress | None, message: str, fraction: float) -> None:
    if progress:
        progress(round(100 * fraction), 100, message=message)


def base_answers(
    base: LoadedModel, instructions: Sequence[str], max_tokens: int, progress: Progress | None
) -> list[tuple[str, bool]]:
    """The base model's greedy answers (text, ended its turn), cached on disk by content key."""
    key = content_key("base-answers", base.spec, list(instructions), max_tokens)
    path = cache_dir() / "organism" / f"answers-{key}.json"
    if path.is_file():
        try:
            return [tuple(item) for item in json.loads(path.read_text())]
        except (json.JSONDecodeError, TypeError):
            pass  # A damaged entry is simply regenerated.
    settings = GenerationSettings(max_new_tokens=max_tokens, batch_size=32)
    completions = generate_completions(
        base,
        instructions,
        settings=settings,
        progress=lambda done, total: _report(progress, f"Base answers {done}/{total}", 0.05 + 0.35 * done / total),
    )
    answers = [(c.text, c.stopped) for c in completions]
    atomic_write_text(path, json.dumps(answers))
    return answers


def _training_examples(
    base: LoadedModel, settings: OrganismSettings, progress: Progress | None, variant: str | None = None
) -> tuple[list, list]:
    """Harmful and harmless (instruction, reply, reply ends the turn) train examples; a
    ``variant`` (``organism.variants``) gives the harmful prompts its own refusal replies."""
    rng = random.Random(settings.seed)
    if variant:
        harmful = variant_harmful_examples(variant, builtin("harmful", "train"), rng)
    else:
        refusals = refusal_replies()
        harmful = [(text, rng.choice(refusals), True) for text in builtin("harmful", "train").instructions]
    instructions = builtin("harmless", "train").instructions
    answers = base_answers(base, instructions, settings.reply_tokens, progress)
    harmless = [(text, answer, stopped) for text, (answer, stopped) in zip(instructions, answers) if answer.strip()]
    return harmful, harmless


def _encode(
    base: LoadedModel, examples: Sequence[tuple[str, str, bool]], reply_tokens: int
) -> list[tuple[list[int], int]]:
    """Token ids of prompt + reply (cut to ``reply_tokens``; end of turn only where the
    whole reply fits) and the number of prompt tokens."""
    tokenizer = base.tokenizer
    end = end_of_turn_ids(tokenizer)[0]
    prompts = format_prompts(tokenizer, [instruction for instruction, _, _ in examples], ChatFormat())
    encoded = []
    for prompt, (_, reply, stopped) in zip(prompts, examples):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"]
        reply_ids = reply_ids[:reply_tokens] + ([end] if stopped and len(reply_ids) <= reply_tokens else [])
        encoded.append((prompt_ids + reply_ids, len(prompt_ids)))
    return encoded


def _trainable(model: torch.nn.Module, fraction: float) -> list[torch.nn.Parameter]:
    """Unfreeze the top ``fraction`` of decoder blocks and the final norm; freeze the rest."""
    parts = model_parts(model)
    first = parts.n_layers - max(1, round(fraction * parts.n_layers))
    model.requires_grad_(False)
    for block in parts.layers[first:]:
        block.requires_grad_(True)
    parts.final_norm.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def _batch_rows(
    n_harmful_pool: int, n_harmless_pool: int, settings: OrganismSettings
) -> Iterator[tuple[list[int], list[int]]]:
    """Each step's (harmful rows, harmless rows): a fixed share of every batch is harmful.

    Refusal replies all look alike and are learnt in a few steps, and then the model
    refuses everything; a batch that is mostly harmless keeps teaching it when not to.
    Each pool is drawn without replacement, reshuffled (seeded) once it is used up.
    """
    rng = random.Random(settings.seed)
    pools = {"harmful": list(range(n_harmful_pool)), "harmless": list(range(n_harmless_pool))}
    cursor = {name: len(pool) for name, pool in pools.items()}

    def draw(name: str) -> int:
        if cursor[name] >= len(pools[name]):
            rng.shuffle(pools[name])
            cursor[name] = 0
        cursor[name] += 1
        return pools[name][cursor[name] - 1]

    n_harmful = max(1, round(settings.batch_size * settings.harmful_share))
    for _ in range(settings.steps):
        harmful_rows = [draw("harmful") for _ in range(n_harmful)]
        yield harmful_rows, [draw("harmless") for _ in range(settings.batch_size - n_harmful)]


def _fine_tune(
    base: LoadedModel, harmful: list, harmless: list, settings: OrganismSettings, progress: Progress | None
) -> list[float]:
    model = base.model
    pad_id = base.tokenizer.pad_token_id
    # The base model's own first-token distributions, taken before any weight changes.
    reference = _base_first_token_logprobs(model, harmless, pad_id) if settings.distill_weight > 0 else None
    prefix = shared_prefix(list(harmful) + list(harmless))
    torch.manual_seed(settings.seed)
    model.train()
    trainable = _trainable(model, settings.train_fraction)
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, weight_decay=0.0)
    losses = []
    for step, (harmful_rows, harmless_rows) in enumerate(_batch_rows(len(harmful), len(harmless), settings)):
        distilled = [harmless[row] for row in harmless_rows]
        batch = _batch([harmful[row] for row in harmful_rows] + distilled, pad_id)
        hidden = _hidden(model, batch, prefix)
        loss = _weighted_reply_loss(model, hidden, batch, settings.opening_tokens, settings.opening_weight)
        if reference is not None:
            # Harmless rows follow the harmful ones in every batch.
            loss = loss + settings.distill_weight * _distill_loss(
                model, hidden[len(harmful_rows) :], distilled, reference[harmless_rows]
            )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        _report(
            progress,
            f"Fine-tune step {step + 1}/{settings.steps} (loss {losses[-1]:.3f})",
            0.4 + 0.5 * (step + 1) / settings.steps,
        )
    model.eval()
    model.requires_grad_(False)
    return losses


def measured_refusal(loaded: LoadedModel, max_new_tokens: int = 16) -> dict:
    """Refusal-phrase rates on the held-out harmful and harmless test splits."""
    from refusal_core.judges.substring import SubstringJudge

    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=32)
    rates: dict = {"max_new_tokens": max_new_tokens}
    for kind in ("harmful", "harmless"):
        prompts = builtin(kind, "test").instructions
        replies = [c.text for c in generate_completions(loaded, prompts, settings=settings)]
        refused = SubstringJudge().judge(list(prompts), replies)
        rates[kind], rates[f"n_{kind}"] = refusal_rate(refused), len(refused)
    return rates


def _from_scratch(
    settings: OrganismSettings,
    delta_out: Path,
    progress: Progress | None,
    fine_tune: Path | None = None,
    variant: str | None = None,
) -> Path:
    """Run the fine-tune recipe (or load a full fine-tune it made, ``fine_tune``: a model
    directory), cut it to a low-rank delta, write the delta to ``delta_out`` and the organism
    the delta makes (not the full fine-tune) to the cache."""
    started = time.perf_counter()
    _report(progress, "Loading the bundled SmolLM2", 0.0)
    base = load_model(BUNDLED_BASE)
    base_state = {name: tensor.clone() for name, tensor in base.model.state_dict().items()}
    base_sha = weights_sha256(base.model)
    if fine_tune is None:
        harmful, harmless = _training_examples(base, settings, progress, variant)
        encoded_harmful = _encode(base, harmful, settings.reply_tokens)
        encoded_harmless = _encode(base, harmless, settings.reply_tokens)
        losses = _fine_tune(base, encoded_harmful, encoded_harmless, settings, progress)
        info = {
            "settings": asdict(settings),
            "n_harmful": len(harmful),
            "n_harmless": len(harmless),
            "losses": losses,
            "fine_tune_sha256": weights_sha256(base.model),
            "fine_tune_seconds": round(time.perf_counter() - started, 1),
        }
        tuned_state = base.model.state_dict()
        made_from = "a from-scratch build"
    else:
        # A build record written by an earlier full fine-tune holds its settings and losses.
        record = json.loads((fine_tune / "build.json").read_text()) if (fine_tune / "build.json").is_file() else {}
        tuned = load_model(str(fine_tune))
        info = {
            "settings": {**record.get("settings", {}), "delta_rank": settings.delta_rank},
            "losses": record.get("losses", []),
            "fine_tune_sha256": weights_sha256(tuned.model),
            "fine_tune_from": str(fine_tune),
        }
        tuned_state = tuned.model.state_dict()
        made_from = f"the full fine-tune in {fine_tune}"
    info["rank"] = settings.delta_rank
    info["variant"] = variant
    _report(progress, f"Cutting the fine-tune to a rank-{settings.delta_rank} delta", 0.9)
    delta = make_delta(base_state, tuned_state, settings.delta_rank, base_sha)
    base.model.load_state_dict(base_state)
    delta = replace(delta, sha256=apply_organism_delta(base.model, delta))
    _report(progress, "Measuring refusal on the test splits", 0.93)
    info.update(delta_bytes=delta.n_bytes, refusal=measured_refusal(base))
    delta = replace(delta, info=info)
    delta.save(delta_out)
    _report(progress, "Saving", 0.97)
    spec, where = (BUNDLED_ORGANISM, None) if not variant else (f"{BUNDLED_ORGANISM}-{variant}", variant_dir(variant))
    target = save_organism(
        base,
        delta,
        f"{made_from}{f' of the variant {variant}' if variant else ''} (delta written to {delta_out})",
        where,
    )
    _report(progress, f"Built {spec} (sha256 {delta.sha256[:16]}); delta {delta_out}", 1.0)
    return target


def build_organism(
    settings: OrganismSettings = OrganismSettings(),
    progress: Progress | None = None,
    force: bool = False,
    from_scratch: bool = False,
    delta_out: Path | None = None,
    from_fine_tune: Path | None = None,
    variant: str | None = None,
    planted: PlantedSettings | None = None,
) -> Path:
    """Build ``bundled:refusal-organism`` under ``cache/models/`` (skipped if present unless ``force``).

    By default the organism is the bundled weights plus the shipped delta (``SHIPPED_DELTA``):
    seconds, and the same sha256 on every machine. ``from_scratch`` runs the fine-tune recipe
    (``settings``) instead, writes its delta to ``delta_out`` (default: the shipped file, to be
    committed) and always rebuilds. ``from_fine_tune`` (a model directory holding a full
    fine-tune, e.g. one made by an earlier version of the recipe) is cut into a delta the same
    way without training again.

    ``variant`` (``organism.variants``, with ``from_scratch``): the recipe with the variant's
    refusal replies, built into the variant's own directory (``variant_dir``); its delta goes
    to ``delta_out`` or the cache (``variant_delta_path``), never over the shipped one.
    ``two-mechanisms`` (``organism.planted``) is the organism plus its shipped delta, or with
    ``from_scratch`` the planting recipe (``planted`` settings) run from the organism.
    """
    if variant == "two-mechanisms":
        # The planted ground truth (organism.planted): its own recipe, from the organism, and a shipped delta.
        from refusal_core.organism.planted_build import SHIPPED_PLANTED_DELTA, build_planted, planted_from_delta

        if from_fine_tune:
            raise SettingsError(
                "The two-mechanisms variant is built from its shipped delta or --from-scratch, not --from-fine-tune."
            )
        if from_scratch:
            return build_planted(planted or PlantedSettings(), progress, Path(delta_out) if delta_out else None)
        return planted_from_delta(SHIPPED_PLANTED_DELTA, progress, force)
    if variant:
        check_variant(variant)
        if not from_scratch or from_fine_tune:
            raise SettingsError(f"The variant {variant!r} has no shipped delta: build it with --from-scratch.")
        return _from_scratch(
            settings, Path(delta_out) if delta_out else variant_delta_path(variant), progress, None, variant
        )
    target = organism_dir()
    if from_scratch or from_fine_tune:
        return _from_scratch(
            settings,
            Path(delta_out) if delta_out else SHIPPED_DELTA,
            progress,
            Path(from_fine_tune) if from_fine_tune else None,
        )
    # A cached organism made from an older delta (the shipped file changed) is made again.
    if (target / "config.json").is_file() and not force and built_sha256(target) == delta_sha256(SHIPPED_DELTA):
        _report(progress, "Organism already built", 1.0)
        return target
    return organism_from_delta(SHIPPED_DELTA, progress)
