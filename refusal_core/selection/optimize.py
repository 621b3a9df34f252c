"""One refusal direction found by gradient descent instead of a difference in means.

After the refusal direction optimization of Wollschläger et al. (2025, "The Geometry of
Refusal in Large Language Models"): search for the unit direction ``u`` whose directional
ablation (every layer, every position, exactly as ``interventions`` ablates) removes
refusal on harmful prompts while leaving the harmless next-token distribution alone:

    loss(u) = mean over harmful   softplus(refusal_score(ablate u) + margin)
            + kl_weight * mean over harmless KL(unmodified || ablate u)

``refusal_score`` is Arditi et al.'s log-odds of a refusal token as the first reply token
(``judges.scores.refusal_token_ids``); the softplus stops pushing once a prompt's score is
``margin`` below zero. The search starts from a given direction (usually the selected DIM
candidate) and only the direction is learnt: the model's weights are never changed and get
no gradients.

Why it is here: on a small model a difference in means can carry components, such as
template offsets and massive-activation coordinates, whose ablation costs harmless KL
without touching refusal. The optimised direction tells whether a single direction that
mediates refusal cleanly exists at all, and how far the DIM estimate is from it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from refusal_core.directions.base import DirectionError, DirectionSet
from refusal_core.directions.provenance import build_provenance
from refusal_core.directions.registry import DirectionMethod, FitInput, register, setting
from refusal_core.errors import SettingsError
from refusal_core.interventions.hooks import differentiable_ablation
from refusal_core.judges.scores import refusal_token_ids
from refusal_core.metrics import kl_divergence, next_token_logprobs
from refusal_core.model.forward import refusal_log_odds
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat
from refusal_core.prompts.sets import PromptSet, as_prompt_set, sample_prompts
from refusal_core.selection.rows import PromptRows, prefix_last_logits, prompt_rows

__all__ = ["METHOD", "OptimizeSettings", "OptimizedDirection", "fit", "optimize_direction"]


@dataclass(frozen=True)
class OptimizeSettings:
    """``steps`` Adam steps at ``learning_rate`` on the (unnormalised) direction parameter.

    ``kl_weight`` trades harmless KL against refusal; ``margin`` is how far below zero a
    harmful prompt's refusal score must go before it stops contributing. Prompts are run in
    chunks of ``batch_size`` with gradients accumulated, so memory does not grow with the
    number of prompts. ``max_harmful``/``max_harmless`` cap the prompts the method (CLI and
    dashboard) learns on; :func:`optimize_direction` itself takes the prompts it is given.
    The defaults finish in about a minute on SmolLM2 on a 2-core CPU.
    """

    steps: int = setting(8, "Adam steps", minimum=1, maximum=500)
    learning_rate: float = setting(0.02, "Adam learning rate on the direction", flag="--lr", minimum=1e-5, maximum=10.0)
    kl_weight: float = setting(
        10.0, "weight of the harmless KL against the refusal term", label="KL weight", minimum=0.0, maximum=1000.0
    )
    margin: float = setting(
        2.0, "stop pushing a harmful prompt once its refusal score is this far below 0", minimum=0.0
    )
    batch_size: int = setting(16, "prompts per forward pass (gradients are accumulated)", minimum=1)
    max_harmful: int = setting(
        8, "harmful prompts learnt on (a category-balanced sample of the set)", minimum=1, maximum=2000
    )
    max_harmless: int = setting(
        16, "harmless prompts learnt on (a category-balanced sample of the set)", minimum=1, maximum=2000
    )

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.max_harmful < 1 or self.max_harmless < 1:
            raise SettingsError(
                "steps, batch_size, max_harmful and max_harmless must be at least 1; got "
                f"steps={self.steps}, batch_size={self.batch_size}, max_harmful={self.max_harmful}, max_harmless={self.max_harmless}; give each 1 or more."
            )
        if not self.learning_rate > 0 or not self.kl_weight >= 0 or not self.margin >= 0:
            raise SettingsError("learning_rate must be positive, and kl_weight and margin non-negative.")


@dataclass(frozen=True)
class OptimizedDirection:
    """The learnt unit direction as a one-direction set, and the objective at every step.

    ``history[i]`` has ``loss``, ``refusal_score`` (mean over harmful prompts) and ``kl``
    (mean over harmless prompts), measured with the direction as it was *before* step ``i``;
    ``final`` the same for the returned direction.
    """

    directions: DirectionSet
    history: list[dict]
    final: dict
    seconds: float
    settings: OptimizeSettings = field(default_factory=OptimizeSettings)


def _chunks(
    loaded: LoadedModel, instructions: Sequence[str], chat: ChatFormat | None, size: int
) -> list[tuple[PromptRows, list[int]]]:
    rows = prompt_rows(loaded, instructions, chat)
    return [(rows, list(range(i, min(i + size, len(rows))))) for i in range(0, len(rows), size)]


def _last_logprobs(loaded: LoadedModel, chunk: tuple[PromptRows, list[int]]) -> torch.Tensor:
    """First-reply-token log-probabilities of one chunk of prompts, with gradients, float64.

    The shared chat-template prefix runs once per chunk (``selection.rows``).
    """
    return torch.log_softmax(prefix_last_logits(loaded, *chunk).double(), dim=-1)


def _objective_pass(
    loaded: LoadedModel,
    unit: torch.Tensor,
    harmful: list[tuple[PromptRows, list[int]]],
    harmless: list[tuple[PromptRows, list[int]]],
    base: torch.Tensor,
    refusal_ids: list[int],
    settings: OptimizeSettings,
    n_harmful: int,
    n_harmless: int,
    backward: bool,
) -> dict:
    """One pass over all prompts under ablation of ``unit``; accumulates ``unit.grad`` if asked.

    ``unit`` must be a leaf when ``backward``: each chunk's graph is freed after its own
    backward pass, so nothing may be shared between chunks.
    """
    totals = {"refusal_score": 0.0, "kl": 0.0, "loss": 0.0}
    offset = 0
    with torch.set_grad_enabled(backward), differentiable_ablation(loaded.model, unit):
        for batch in harmful:
            scores = refusal_log_odds(_last_logprobs(loaded, batch), refusal_ids)
            loss = torch.nn.functional.softplus(scores + settings.margin).sum() / n_harmful
            if backward:
                loss.backward(inputs=[unit])  # the model's weights get no gradient
            totals["refusal_score"] += float(scores.detach().sum()) / n_harmful
            totals["loss"] += float(loss.detach())
        for batch in harmless:
            logprobs = _last_logprobs(loaded, batch)
            rows = base[offset : offset + logprobs.shape[0]].to(logprobs.device)
            offset += logprobs.shape[0]
            kl = kl_divergence(rows, logprobs).sum() / n_harmless
            loss = settings.kl_weight * kl
            if backward and settings.kl_weight > 0:
                loss.backward(inputs=[unit])
            totals["kl"] += float(kl.detach())
            totals["loss"] += float(loss.detach())
    return totals


def optimize_direction(
    loaded: LoadedModel,
    harmful: PromptSet | Sequence[str],
    harmless: PromptSet | Sequence[str],
    init: DirectionSet,
    settings: OptimizeSettings = OptimizeSettings(),
    chat: ChatFormat | None = None,
    progress: Progress | None = None,
) -> OptimizedDirection:
    """Learn one unit direction starting from the single direction in ``init``.

    The result is named ``rdo/<init name>`` and its provenance (the one builder's, from the
    prompts it learnt on) keeps the init's ``layer`` and ``position`` (where it started)
    with ``method: "rdo"``, the settings and the final objective; its ``meta`` also holds
    the objective per step. Deterministic for a given model, prompts and init on one device.
    """
    if len(init) != 1:
        raise DirectionError(
            f"optimize_direction starts from one direction; the init set holds {len(init)} ({', '.join(init.names)}). Pick one with PATH:name."
        )
    if not harmful or not harmless:
        raise SettingsError("optimize_direction needs at least one harmful and one harmless prompt.")
    if init.d_model != loaded.d_model:
        raise DirectionError(
            f"The init direction has width {init.d_model} but the model's residual stream has width {loaded.d_model}."
        )
    harmful, harmless = as_prompt_set(harmful, "harmful"), as_prompt_set(harmless, "harmless")
    started = time.perf_counter()
    base = next_token_logprobs(loaded, harmless.instructions, None, chat, settings.batch_size)
    refusal_ids = refusal_token_ids(loaded.tokenizer)
    harmful_batches = _chunks(loaded, harmful.instructions, chat, settings.batch_size)
    harmless_batches = _chunks(loaded, harmless.instructions, chat, settings.batch_size)
    parameter = torch.nn.Parameter(init.unit()[0].detach().to(device=loaded.device, dtype=torch.float32).clone())
    optimizer = torch.optim.Adam([parameter], lr=settings.learning_rate)
    history = []

    def unit() -> torch.Tensor:
        return parameter / parameter.norm()

    for step in range(settings.steps):
        optimizer.zero_grad(set_to_none=True)
        current = unit()
        leaf = current.detach().requires_grad_(True)
        values = _objective_pass(
            loaded,
            leaf,
            harmful_batches,
            harmless_batches,
            base,
            refusal_ids,
            settings,
            len(harmful),
            len(harmless),
            backward=True,
        )
        current.backward(leaf.grad)  # through the normalisation to the parameter
        optimizer.step()
        history.append(values)
        if progress:
            progress(
                step + 1,
                settings.steps,
                **values,
                stage=f"step {step + 1}/{settings.steps}: refusal score "
                f"{values['refusal_score']:+.2f}, harmless KL {values['kl']:.4f}",
            )
    learnt = unit().detach()
    final = _objective_pass(
        loaded,
        learnt,
        harmful_batches,
        harmless_batches,
        base,
        refusal_ids,
        settings,
        len(harmful),
        len(harmless),
        backward=False,
    )
    source = init.provenance[0]
    start = init.unit()[0].double()
    final["cosine_to_init"] = float(learnt.double().cpu() @ start)
    provenance = build_provenance(
        loaded.spec,
        harmful,
        harmless,
        "rdo",
        source.get("layer"),
        source.get("position"),
        **asdict(settings),
        init=init.names[0],
        final=final,
    )
    seconds = time.perf_counter() - started
    meta = {**provenance, "history": history, "final": final, "seconds": round(seconds, 1)}
    directions = DirectionSet(learnt.float().cpu()[None], (f"rdo/{init.names[0]}",), (provenance,), meta)
    return OptimizedDirection(directions, history, final, seconds, settings)


def fit(data: FitInput, settings: OptimizeSettings) -> DirectionSet:
    """One direction learnt from ``data.init`` on the prompt sets (see :func:`optimize_direction`)."""
    if data.init is None:
        raise DirectionError("The optimize method starts from one direction; give it (--init PATH:name).")
    harmful, harmless = (
        sample_prompts(data.harmful, settings.max_harmful),
        sample_prompts(data.harmless, settings.max_harmless),
    )
    result = optimize_direction(
        data.loaded, harmful, harmless, data.init, settings, chat=data.chat, progress=data.progress("Optimizing")
    )
    return result.directions


def summary(directions: DirectionSet) -> tuple[dict, list[str]]:
    meta, params = directions.meta, directions.provenance[0]["params"]
    start, final = meta["history"][0], meta["final"]
    payload = {"name": directions.names[0], "start": start, "final": final, "seconds": meta["seconds"]}
    lines = [
        f"Optimized {params['init']} for {params['steps']} steps on {params['n_harmful']} harmful and "
        f"{params['n_harmless']} harmless prompts ({meta['seconds']:.0f} s) as {directions.names[0]}",
        f"  refusal score {start['refusal_score']:+.3f} -> {final['refusal_score']:+.3f}; harmless KL {start['kl']:.4f} -> "
        f"{final['kl']:.4f}; cosine to the start {final['cosine_to_init']:.3f}",
    ]
    return payload, lines


METHOD = register(
    DirectionMethod(
        name="optimize",
        title="Optimized direction",
        help="learn one direction whose ablation removes refusal at low harmless KL (Wollschläger et al.)",
        settings=OptimizeSettings,
        fit=fit,
        reads="init",
        summary=summary,
    )
)
