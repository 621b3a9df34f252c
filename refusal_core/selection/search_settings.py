"""How a subset search runs (``SearchSettings``): one field per setting, each with its
default and help written once; ``directions search`` and the Search page read them."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from refusal_core.damage import DEFAULT_JUDGE
from refusal_core.errors import SettingsError
from refusal_core.judges import MIN_RATE_TOKENS
from refusal_core.judges.registry import judge_names
from refusal_core.judges.verdict import DEFAULT_SUCCESS, LABELS, check_success
from refusal_core.selection.study import check_storage, check_study_name
from refusal_core.selection.trials import OBJECTIVES
from refusal_core.settings import joined, setting

__all__ = ["Objective", "SearchSettings"]

Objective = Literal["verdicts", "substring", "score", "judge"]


@dataclass(frozen=True)
class SearchSettings:
    """How a subset search runs; each field's help says what it does.

    The ``judge`` objective (refusal rate by a Judge object passed to run_search) is for
    Python callers; the CLI and the dashboard offer the other three (see ``trials.py``).
    Without a ``study_name`` the same search finds its own study again and a changed one
    starts afresh: ``<label>-k<k>-<hash>`` with ``study_label`` made file-name safe.
    """

    k: int = setting(3, "directions ablated together per trial", label="k (directions per trial)", minimum=1)
    n_trials: int = setting(
        20,
        "trials the study holds in all, over every worker sharing it (a second worker or a resumed run adds only the rest)",
        label="Trials",
        flag="--trials",
        minimum=1,
        maximum=10000,
    )
    objective: Objective = setting(
        "verdicts",
        "verdicts (share of greedy replies the judge, --judge or the sidebar's, finds not a success, so breaking or "
        "deflecting the model does not win), substring (refusal phrases alone: gibberish counts as success) or score "
        "(mean first-token refusal score, no generation, fast)",
        choices=("verdicts", "substring", "score"),
    )
    judge: str = setting(
        DEFAULT_JUDGE, "the judge of the verdicts objective (a registered judge)", choices=tuple(judge_names())
    )
    success: tuple[str, ...] = setting(
        DEFAULT_SUCCESS,
        "verdicts that count as success in the verdicts objective, comma-separated (e.g. complied,deflected): "
        "complied alone by default; add deflected to count fluent replies that neither refuse nor do the task",
        label="Verdicts that count as success",
        choices=LABELS,
        parse=lambda text: tuple(part.strip() for part in text.split(",") if part.strip()),
        show=joined(","),
    )
    kl_penalty: float = setting(
        1.0,
        "objective += this times the mean harmless KL (nats); 1.0 makes one nat cost as much as every reply failing",
        label="KL penalty",
        minimum=0.0,
        maximum=100.0,
        step=0.1,
    )
    max_new_tokens: int = setting(
        MIN_RATE_TOKENS,
        "reply length per trial (late refusals need 64)",
        label="Max new tokens",
        minimum=1,
        maximum=512,
    )
    stored_replies: int = setting(8, "replies kept per trial in the study, to show them later", cli=False)
    seed: int = setting(0, "seed of the TPE sampler", minimum=0, maximum=2**31 - 1)
    storage: str | None = setting(
        None,
        "Optuna storage: an SQLite file path or a URL (sqlite:///f.db, postgresql://user:pw@host/db); "
        "default: SQLite under cache/search/",
    )
    study_name: str | None = setting(
        None,
        "study name (letters, digits, . _ -; default: derived from the inputs); "
        "workers with the same --storage and --study share one study",
        flag="--study",
    )
    study_label: str | None = setting(None, "names a derived study (the pool's name, say; search when none)", cli=False)
    ablate_mode: Literal["orthogonal", "sequential"] = setting(
        "orthogonal",
        "orthogonal (project out the span) or sequential (one after another)",
        label="Ablation mode",
        choices=("orthogonal", "sequential"),
        cli=False,
    )
    batch_size: int = setting(16, "prompts per forward pass or generate call")
    heartbeat_seconds: int = setting(
        10,
        "seconds between a running trial's heartbeats; a worker silent for 3x this long has its trial re-run by another",
        flag="--heartbeat",
    )

    def __post_init__(self) -> None:
        check_storage(self.storage)
        if self.study_name is not None:
            check_study_name(self.study_name)
        if not (isinstance(self.heartbeat_seconds, int) and self.heartbeat_seconds >= 1):
            raise SettingsError(
                f"heartbeat_seconds must be a whole number of seconds >= 1, got {self.heartbeat_seconds!r}."
            )
        if self.k < 1:
            raise SettingsError(f"k must be at least 1, got {self.k}.")
        if self.n_trials < 0:
            raise SettingsError(
                f"n_trials must be non-negative, got {self.n_trials}; give 0 or more trials (--trials)."
            )
        if self.objective not in OBJECTIVES:
            raise SettingsError(f"Unknown objective {self.objective!r}; use one of {', '.join(OBJECTIVES)}.")
        if self.judge not in judge_names():
            raise SettingsError(f"Unknown judge {self.judge!r}; use one of {', '.join(judge_names())}.")
        object.__setattr__(self, "success", check_success(self.success))
        if not (self.kl_penalty >= 0 and math.isfinite(self.kl_penalty)):
            raise SettingsError(f"kl_penalty must be a finite non-negative number, got {self.kl_penalty}.")
        if self.max_new_tokens < 1 or self.batch_size < 1 or self.stored_replies < 0:
            raise SettingsError("max_new_tokens and batch_size must be at least 1, stored_replies at least 0.")
        if self.ablate_mode not in ("orthogonal", "sequential"):
            raise SettingsError(f"ablate_mode must be 'orthogonal' or 'sequential', got {self.ablate_mode!r}.")

    def identity(self) -> dict:
        """The settings that change what a trial measures (not how many trials or where stored)."""
        skip = {"n_trials", "storage", "study_name", "study_label", "batch_size", "heartbeat_seconds", "stored_replies"}
        if self.success == DEFAULT_SUCCESS:  # studies made before the choice existed keep their names
            skip.add("success")
        return {name: value for name, value in dataclasses.asdict(self).items() if name not in skip}
