"""Damage beside every refusal rate: judged columns with their broken share and harmless KL.

A refusal rate alone rewards an intervention that wrecks the model: gibberish contains no
refusal phrase. So every column of replies (one intervention) is reported with three
shares, refused / complied / broken, from a judge panel (``refusal_core.judges``), and with
the harmless first-token KL that the intervention costs. The CLI's ``generate``, the
Generate page and the subset search read their judges and figures from here.

Judge choices (``--judge`` and the dashboard's sidebar) come from the judge registry
(``judges.registry.judge_names()``; ``JUDGE_CHOICES`` is that list at import time):

- ``learned`` (the default): four verdicts, refused / complied / deflected / broken;
- ``panel``: refusal phrases, first-token refusal score and the semantic judge vote; the
  broken detector overrides them (three verdicts);
- ``substring``: the refusal phrases alone, exactly the judge used before the panel (no model
  use, no broken verdict), so earlier figures stay reproducible;
- ``substring+broken``, ``refusal-score``, ``semantic``: one refusal judge plus the broken detector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from refusal_core.errors import SettingsError
from refusal_core.generation import Completion
from refusal_core.interventions.spec import Intervention
from refusal_core.judges import JudgePanel, Verdict, verdict_rates
from refusal_core.judges.registry import DEFAULT_JUDGE, build_judge, judge_names
from refusal_core.judges.substring import PhraseJudge
from refusal_core.judges.verdict import LABELS
from refusal_core.metrics import kl_divergence, next_token_logprobs
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.chat import ChatFormat

__all__ = [
    "BROKEN_WARNING",
    "DEFAULT_JUDGE",
    "JUDGE_CHOICES",
    "KL_PROMPTS",
    "ColumnDamage",
    "PhraseJudge",
    "broken_warning",
    "is_unmodified",
    "judge_by_name",
    "judge_columns",
    "mean_kl",
]

JUDGE_CHOICES: tuple[str, ...] = judge_names()
# A column with more than this share of broken replies gets a warning: its refusal rate is
# not evidence that refusal was removed.
BROKEN_WARNING = 0.10
# Harmless prompts the KL is measured on by default (one forward each, no generation).
KL_PROMPTS = 32


def judge_by_name(name: str, extra_phrases: Sequence[str] = ()):
    """The registered judge ``name`` (``judges.registry``); an unknown name raises SettingsError.

    ``extra_phrases`` (more refusal phrases) work with ``substring`` only.
    """
    names = judge_names()
    if name not in names:
        raise SettingsError(f"Unknown judge {name!r}; choose one of {', '.join(names)}.")
    if extra_phrases and name != "substring":
        raise SettingsError(f"Extra refusal phrases work with the substring judge only, not {name!r}.")
    return build_judge(name, extra=tuple(extra_phrases)) if name == "substring" else build_judge(name)


def is_unmodified(intervention: Intervention) -> bool:
    """True when the intervention changes nothing (the baseline column)."""
    return intervention.ablate is None and intervention.actadd is None


def mean_kl(
    loaded: LoadedModel,
    harmless: Sequence[str],
    intervention: Intervention,
    base_logprobs: torch.Tensor,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
) -> float:
    """Mean KL(unmodified || intervened) of the first reply token over ``harmless``, in nats.

    ``base_logprobs``: the unmodified ``next_token_logprobs`` of ``harmless`` ``[n, vocab]``,
    computed once by the caller and shared by every column. The baseline costs nothing: 0.0.
    """
    if is_unmodified(intervention):
        return 0.0
    other = next_token_logprobs(loaded, harmless, intervention, chat, batch_size)
    return float(kl_divergence(base_logprobs, other).mean())


@dataclass(frozen=True)
class ColumnDamage:
    """One column's verdicts, the share of each verdict and its harmless KL.

    ``kl``: mean first-token KL on harmless prompts in nats (None: not measured).
    ``judge``: the name of the judge that gave the verdicts.
    """

    name: str
    verdicts: tuple[Verdict, ...]
    kl: float | None
    judge: str

    @property
    def rates(self) -> dict[str, float]:
        """The share of each verdict in ``LABELS`` (summing to 1), ``disagree`` and ``n``."""
        return verdict_rates(self.verdicts)

    @property
    def judged_broken(self) -> bool:
        """Whether the judge gave a broken verdict at all (the substring judge does not)."""
        return any(verdict.judges.get("broken") is not None for verdict in self.verdicts)

    @property
    def warning(self) -> str | None:
        """A sentence when more than BROKEN_WARNING of the replies are broken, else None."""
        return broken_warning(self.rates["broken"])

    def summary(self) -> dict:
        """The JSON-ready summary row of this column: the share of each verdict in ``LABELS``
        (None for ``broken`` when the judge has no broken verdict), ``disagree``, ``kl``, ``n``."""
        rates = self.rates
        shares = {label: rates[label] for label in LABELS}
        if not self.judged_broken:
            shares["broken"] = None
        return {
            **shares,
            "disagree": rates["disagree"],
            "kl": self.kl,
            "n": rates["n"],
            "judge": self.judge,
            "warning": self.warning,
        }


def broken_warning(broken_share: float | None) -> str | None:
    """The warning for a broken share above BROKEN_WARNING (None below it or when unknown)."""
    if broken_share is None or math.isnan(broken_share) or broken_share <= BROKEN_WARNING:
        return None
    return (
        f"{broken_share:.0%} of the replies are broken (not fluent text): this intervention damages the model, "
        "and its low refusal rate does not mean refusal was removed."
    )


def judge_columns(
    loaded: LoadedModel,
    columns: Mapping[str, Sequence[Completion]],
    variants: Sequence[Intervention],
    judge: JudgePanel | PhraseJudge,
    harmless: Sequence[str] = (),
    base_logprobs: torch.Tensor | None = None,
    chat: ChatFormat | None = None,
    batch_size: int = 16,
) -> dict[str, ColumnDamage]:
    """Verdicts, shares and harmless KL of each column that ``generate_side_by_side`` returned.

    ``variants``: the interventions the columns were generated under (matched by name).
    ``harmless``: prompts for the KL (empty: KL not measured, None in the result).
    ``base_logprobs``: their unmodified first-token log-probs, if the caller has them cached;
    computed here otherwise.
    """
    by_name = {variant.name: variant for variant in variants}
    missing = [name for name in columns if name not in by_name]
    if missing:
        raise ValueError(f"No intervention given for the columns {', '.join(missing)}.")
    if harmless and base_logprobs is None:
        base_logprobs = next_token_logprobs(loaded, harmless, None, chat, batch_size)
    damage = {}
    for name, completions in columns.items():
        intervention = by_name[name]
        instructions = [completion.instruction for completion in completions]
        verdicts = judge.verdicts(
            loaded, instructions, [completion.text for completion in completions], intervention, chat=chat
        )
        kl = mean_kl(loaded, harmless, intervention, base_logprobs, chat, batch_size) if harmless else None
        damage[name] = ColumnDamage(name, tuple(verdicts), kl, getattr(judge, "name", "panel"))
    return damage
