"""The settings of ``experiments many-directions`` (each written once, with its default and
help) and the prompts it reads (built-in splits or the user's files)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from refusal_core.damage import JUDGE_CHOICES
from refusal_core.errors import SettingsError
from refusal_core.judges.panel import MIN_RATE_TOKENS
from refusal_core.prompts.loaders import builtin
from refusal_core.prompts.sets import PromptSet, sample_prompts
from refusal_core.settings import grid, int_list, joined, setting

__all__ = ["ExperimentPrompts", "ManyDirectionsSettings", "builtin_prompts"]


@dataclass(frozen=True)
class ManyDirectionsSettings:
    """What the comparison runs; each field's help says what it does (the CLI's flags and their
    defaults are generated from the fields).

    The defaults finish one layer in about a quarter of an hour on a shared 2-core CPU. Both
    reply lengths are below ``judges.MIN_RATE_TOKENS`` for time; the organism's refusals start
    at the first token.
    """

    layers: tuple[int, ...] = setting(
        (16,), "block inputs to compare at, comma-separated", parse=int_list("--layers"), show=joined(",")
    )
    max_k: int = setting(5, "largest subset searched per family")
    som_seeds: tuple[int, ...] = setting(
        (0, 1, 2), "one SOM per seed, comma-separated", parse=int_list("--som-seeds"), show=joined(",")
    )
    som_grid: tuple[int, int] = setting(
        (3, 3), "SOM grid ROWSxCOLUMNS (1x1 gives the DIM direction)", parse=grid("--som-grid"), show=joined("x")
    )
    clusters: int = setting(6, "k-means clusters of per-prompt directions (0: leave them out)")
    optimize: bool = setting(True, "learn the optimized (RDO) direction from the DIM one (--no-optimize leaves it out)")
    optimize_steps: int = setting(8, "Adam steps of the RDO direction")
    trials: int = setting(3, "search trials per (family, k), capped at the distinct subsets")
    val_harmful: int = setting(6, "harmful val prompts each search trial is measured on", cli=False)
    val_harmless: int = setting(6, "harmless val prompts each search trial is measured on", cli=False)
    test_harmful: int = setting(20, "harmful test prompts every point is reported on", cli=False)
    test_harmless: int = setting(8, "harmless test prompts every point is reported on", cli=False)
    search_tokens: int = setting(24, "reply length in the search")
    test_tokens: int = setting(48, f"reply length on the test split (the judges' rate length is {MIN_RATE_TOKENS})")
    judge: str = setting("panel", "judge of the verdicts", choices=JUDGE_CHOICES)
    kl_penalty: float = setting(1.0, "search objective += this times the harmless KL (nats)")
    n_boot: int = setting(1000, "bootstrap resamples")
    boot_seed: int = setting(0, "seed of the bootstrap resamples")
    search_seed: int = setting(0, "seed of the search's TPE sampler", flag="--seed")
    batch_size: int = setting(
        64, "rows per batched call (64 rows decode about 2.6 times faster per reply token than 8 on a 2-core CPU)"
    )

    def __post_init__(self) -> None:
        positive = (
            "max_k",
            "optimize_steps",
            "trials",
            "val_harmful",
            "val_harmless",
            "test_harmful",
            "test_harmless",
            "search_tokens",
            "test_tokens",
            "n_boot",
            "batch_size",
        )
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(
                    f"{name.replace('_', ' ')} must be a whole number >= 1, got {value!r} (--{name.replace('_', '-')})."
                )
        if not self.layers or len(set(self.layers)) != len(self.layers):
            raise SettingsError(f"Give one or more distinct layers (--layers 12,16), got {list(self.layers)}.")
        if not self.som_seeds or len(set(self.som_seeds)) != len(self.som_seeds) or min(self.som_seeds) < 0:
            raise SettingsError(
                f"Give one or more distinct non-negative SOM seeds (--som-seeds 0,1,2), got {list(self.som_seeds)}."
            )
        if len(self.som_grid) != 2 or min(self.som_grid) < 1:
            raise SettingsError(f"The SOM grid must be two sizes >= 1 (--som-grid 3x3), got {self.som_grid}.")
        if self.clusters < 0 or self.clusters == 1:
            raise SettingsError(f"--clusters must be 0 (leave clusters out) or at least 2, got {self.clusters}.")
        if self.judge not in JUDGE_CHOICES:
            raise SettingsError(f"Unknown judge {self.judge!r}; use one of {', '.join(JUDGE_CHOICES)}.")
        if not (math.isfinite(self.kl_penalty) and self.kl_penalty >= 0):
            raise SettingsError(f"--kl-penalty must be a finite number >= 0, got {self.kl_penalty}.")

    def as_dict(self) -> dict:
        return {
            name: list(value) if isinstance(value, tuple) else value for name, value in dataclasses.asdict(self).items()
        }


@dataclass(frozen=True)
class ExperimentPrompts:
    """Directions are fit on ``train``, subsets chosen on ``val``, points reported on ``test``."""

    train_harmful: PromptSet
    train_harmless: PromptSet
    val_harmful: PromptSet
    val_harmless: PromptSet
    test_harmful: PromptSet
    test_harmless: PromptSet

    def hashes(self) -> dict[str, str]:
        return {field.name: getattr(self, field.name).content_hash() for field in dataclasses.fields(self)}

    def counts(self) -> dict[str, int]:
        return {field.name: len(getattr(self, field.name)) for field in dataclasses.fields(self)}


def builtin_prompts(settings: ManyDirectionsSettings) -> ExperimentPrompts:
    """The built-in splits, val and test cut to the settings' sizes (category-balanced samples)."""
    return ExperimentPrompts(
        builtin("harmful", "train"),
        builtin("harmless", "train"),
        sample_prompts(builtin("harmful", "val"), settings.val_harmful),
        sample_prompts(builtin("harmless", "val"), settings.val_harmless),
        sample_prompts(builtin("harmful", "test"), settings.test_harmful),
        sample_prompts(builtin("harmless", "test"), settings.test_harmless),
    )
