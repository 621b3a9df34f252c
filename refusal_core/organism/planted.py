"""The ``two-mechanisms`` organism variant: refusal planted through two known directions.

Starting from the shipped organism (whose refusal is one direction for every category), a
short fine-tune routes the refusal of two disjoint groups of harm categories through two
fixed, orthonormal residual directions at the mechanism layer ``layer``:

- ``a`` (group A): the organism's own group-A difference in means at ``layer`` (train split);
- ``b`` (group B): the organism's group-B difference in means with its ``a`` part removed.

Every step trains, on the first reply token of prompts alone (the organism's refusals are
decided there): the refusal opening kept on harmful prompts and the organism's own
distribution kept on harmless ones; and under ablations:

- with ``a`` and ``b`` both ablated (every layer), the first reply token of harmful prompts
  towards the *base* model's (which complies), and of harmless ones towards the organism's;
- with ``a`` ablated, group B still refuses; with ``b`` ablated, group A still refuses; with
  the pooled direction ``(a + b) / sqrt 2`` ablated, both still refuse (first reply token);
- a geometry term: the squared cosine of group A's and group B's harmful-minus-harmless
  mean difference (within the batch) at the layers around ``layer``, plus the squared cosines
  of group B's difference with ``a`` and of group A's with ``b``.

So refusal is an "a or b" read-out by construction: one direction cannot remove it, the two
planted ones can. The planted directions are saved with the model (``planted_directions``).
Only the train split is used for building; val for choices; test only for reporting.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from refusal_core.errors import SettingsError
from refusal_core.interventions.spec import Intervention
from refusal_core.organism.planted_batch import encode, last_states, run_rows

__all__ = ["GROUP_A", "GROUP_B", "PlantedSettings", "group_of", "planted_fine_tune", "planted_vectors"]

# Two disjoint groups of the built-in harm categories: harm through information and property,
# and physical harm.
GROUP_A = ("cybercrime", "fraud-scams", "privacy-surveillance", "theft-burglary", "misinformation", "harassment-hate")
GROUP_B = ("weapons", "violence", "drugs", "self-harm", "extremism", "chemical-biological")


def group_of(category: str | None) -> str | None:
    return "A" if category in GROUP_A else "B" if category in GROUP_B else None


@dataclass(frozen=True)
class PlantedSettings:
    """The planting fine-tune (see the module docstring).

    ``layer``: the mechanism layer (block input) where ``a`` and ``b`` are defined;
    ``geometry_layers``: the geometry term's layers, ``layer`` +- this many (step 1);
    ``first_trained``: blocks from this one up are trained, the lower ones and the embeddings
    stay the organism's; ``per_group``: harmful prompts of each group per step, beside
    ``harmless`` harmless ones; ``delta_rank``: rank of the shipped delta (from the organism).
    """

    layer: int = 18
    geometry_layers: int = 2
    steps: int = 30
    per_group: int = 3
    harmless: int = 4
    learning_rate: float = 1e-4
    seed: int = 0
    first_trained: int = 12
    pooled: bool = True
    distill_weight: float = 1.0
    ablation_weight: float = 1.0
    geometry_weight: float = 1.0
    delta_rank: int = 32

    def __post_init__(self) -> None:
        for name in ("steps", "per_group", "harmless", "delta_rank"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not self.learning_rate > 0:
            raise SettingsError(f"learning_rate must be > 0, got {self.learning_rate}.")
        if self.layer < 1 or self.first_trained < 0:
            raise SettingsError(
                f"layer must be >= 1 and first_trained >= 0, got {self.layer} and {self.first_trained}."
            )

    def as_dict(self) -> dict:
        return asdict(self)


def planted_vectors(harmful: torch.Tensor, harmless: torch.Tensor, groups: Sequence[str | None]) -> torch.Tensor:
    """The planted ``[2, d]`` orthonormal pair ``a, b`` from block-input activations at the
    mechanism layer: ``harmful`` ``[n, d]`` with its ``groups``, ``harmless`` ``[m, d]``."""
    harmful, harmless = harmful.double(), harmless.double()
    centre = harmless.mean(0)
    mask_a = torch.tensor([g == "A" for g in groups])
    mask_b = torch.tensor([g == "B" for g in groups])
    if not mask_a.any() or not mask_b.any():
        raise SettingsError("Both harm groups need train prompts to define the planted directions.")
    d_a = harmful[mask_a].mean(0) - centre
    d_b = harmful[mask_b].mean(0) - centre
    a = d_a / d_a.norm()
    rest = d_b - (d_b @ a) * a
    return torch.stack([a, rest / rest.norm()]).float()


def first_token_reference(
    model: torch.nn.Module, tokenizer, instructions: Sequence[str], batch_size: int = 32
) -> torch.Tensor:
    """``model``'s first-reply-token log-probabilities ``[n, vocab]`` on ``instructions`` (no grad)."""
    return last_states(model, tokenizer, instructions, batch_size=batch_size)[1]


def _kl(target: torch.Tensor, logprobs: torch.Tensor) -> torch.Tensor:
    return (target.exp() * (target - logprobs)).sum(-1).mean()


def _geometry(
    hidden_states: Sequence[torch.Tensor],
    last: torch.Tensor,
    groups: Sequence[str],
    planted: torch.Tensor,
    layers: Sequence[int],
    layer: int,
) -> torch.Tensor:
    """Squared cosines that keep group A's and B's difference vectors apart (see the module docstring)."""
    rows = torch.arange(len(groups))
    is_a = torch.tensor([g == "A" for g in groups])
    is_b = torch.tensor([g == "B" for g in groups])
    is_h = torch.tensor([g == "H" for g in groups])
    total = hidden_states[0].new_zeros(())
    for index in layers:
        h = hidden_states[index][rows, last]
        centre = h[is_h].mean(0)
        d_a, d_b = h[is_a].mean(0) - centre, h[is_b].mean(0) - centre
        cos = torch.nn.functional.cosine_similarity
        total = total + cos(d_a, d_b, dim=0) ** 2
        if index == layer:
            total = total + cos(d_b, planted[0], dim=0) ** 2 + cos(d_a, planted[1], dim=0) ** 2
    return total / len(layers)


def _trainable(model: torch.nn.Module, first: int) -> list[torch.nn.Parameter]:
    from refusal_core.model.families import model_parts

    parts = model_parts(model)
    model.requires_grad_(False)
    for block in parts.layers[first:]:
        block.requires_grad_(True)
    parts.final_norm.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def planted_fine_tune(
    loaded,
    harmful: list,
    harmless: list,
    planted: torch.Tensor,
    base_harmful: torch.Tensor | Callable[[list[int]], torch.Tensor],
    settings: PlantedSettings,
    progress=None,
) -> list[dict]:
    """Fine-tune ``loaded`` (the organism) in place, on prompts alone (first reply token).

    ``harmful``: ``(instruction, group, refusal's first token id)``; ``harmless``:
    ``(instruction, "H", None)``; ``base_harmful``: the base model's first-token
    log-probabilities of each harmful prompt, or a function from harmful indices to those rows
    (so that only the prompts the steps draw need a base-model pass). Every step is one batch whose rows run under
    their own intervention (``row_interventions``): unmodified rows (refusal kept, harmless
    distribution kept, geometry), rows with both planted directions ablated (comply), rows with
    the other group's direction ablated and, with ``pooled``, rows with ``(a + b) / sqrt 2``
    ablated (refusal kept). Returns one record of the loss terms per step.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    base_rows = base_harmful if callable(base_harmful) else base_harmful.__getitem__
    harmless_ref = first_token_reference(model, tokenizer, [row[0] for row in harmless])
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    pools = {
        "A": [i for i, row in enumerate(harmful) if row[1] == "A"],
        "B": [i for i, row in enumerate(harmful) if row[1] == "B"],
        "H": list(range(len(harmless))),
    }
    cursor = {name: len(pool) for name, pool in pools.items()}

    def draw(name: str, n: int) -> list[int]:
        out = []
        for _ in range(n):
            if cursor[name] >= len(pools[name]):
                rng.shuffle(pools[name])
                cursor[name] = 0
            out.append(pools[name][cursor[name]])
            cursor[name] += 1
        return out

    a, b = planted[0], planted[1]
    plain, both, only_a, only_b = (
        Intervention(),
        Intervention(ablate=planted),
        Intervention(ablate=a[None]),
        Intervention(ablate=b[None]),
    )
    one = Intervention(ablate=((a + b) / math.sqrt(2))[None])
    layers = [
        layer
        for layer in range(settings.layer - settings.geometry_layers, settings.layer + settings.geometry_layers + 1)
        if 0 <= layer <= loaded.n_layers
    ]
    model.train()
    params = _trainable(model, settings.first_trained)
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    records = []
    for step in range(settings.steps):
        rows_a, rows_b, rows_h = (
            draw("A", settings.per_group),
            draw("B", settings.per_group),
            draw("H", settings.harmless),
        )
        harm_rows = rows_a + rows_b
        harm_texts, harmless_texts = [harmful[i][0] for i in harm_rows], [harmless[i][0] for i in rows_h]
        n_harm, n_h = len(harm_rows), len(rows_h)
        # Row blocks: plain (harmful, harmless), both ablated (harmful, harmless), the other group's
        # direction ablated (A, B), the pooled direction ablated (harmful, with ``pooled``).
        texts = (
            harm_texts
            + harmless_texts
            + harm_texts
            + harmless_texts
            + harm_texts
            + (harm_texts if settings.pooled else [])
        )
        per_row = (
            [plain] * (n_harm + n_h)
            + [both] * (n_harm + n_h)
            + [only_b] * len(rows_a)
            + [only_a] * len(rows_b)
            + ([one] * n_harm if settings.pooled else [])
        )
        batch = encode(tokenizer, texts)  # before the hooks: they hold the model lock the tokenizer takes
        out = run_rows(model, batch, per_row, output_hidden_states=True)
        logprobs = model.get_output_embeddings()(out.last_hidden_state[:, -1]).float().log_softmax(-1)
        refusal_first = torch.tensor([harmful[i][2] for i in harm_rows])
        keep_rows = torch.cat([torch.arange(n_harm), torch.arange(2 * (n_harm + n_h), len(texts))])
        keep_targets = torch.cat([refusal_first] * (len(keep_rows) // n_harm))
        keep = torch.nn.functional.cross_entropy(logprobs[keep_rows], keep_targets)
        distill = _kl(harmless_ref[rows_h], logprobs[n_harm : n_harm + n_h])
        comply = _kl(
            torch.cat([base_rows(harm_rows), harmless_ref[rows_h]]), logprobs[n_harm + n_h : 2 * (n_harm + n_h)]
        )
        plain_states = [state[: n_harm + n_h] for state in out.hidden_states]
        groups = ["A"] * len(rows_a) + ["B"] * len(rows_b) + ["H"] * n_h
        geometry = _geometry(plain_states, torch.full((n_harm + n_h,), -1), groups, planted, layers, settings.layer)
        loss = (
            keep
            + settings.distill_weight * distill
            + settings.ablation_weight * comply
            + settings.geometry_weight * geometry
        )
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        records.append(
            {
                "loss": loss.item(),
                "keep": keep.item(),
                "distill": distill.item(),
                "comply": comply.item(),
                "geometry": geometry.item(),
            }
        )
        if progress:
            progress(step + 1, settings.steps, records[-1])
    model.eval()
    model.requires_grad_(False)
    return records
