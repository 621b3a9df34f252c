"""What ``categories report`` runs: each setting declared once, with its default and help;
the CLI's flags are generated from these fields."""

from __future__ import annotations

from dataclasses import dataclass

from refusal_core.categories.conditions import KINDS, MARGINS, SHRINKAGES
from refusal_core.damage import DEFAULT_JUDGE, JUDGE_CHOICES
from refusal_core.errors import SettingsError
from refusal_core.settings import setting

__all__ = ["CategoriesSettings"]


@dataclass(frozen=True)
class CategoriesSettings:
    """The report's settings. The defaults measure every harmful test prompt (all of each
    category's), enough harmless ones that one refusal stays within the goal's 5%, and greedy
    replies long enough to hold the organism's opening refusal phrase, judged by the panel."""

    layer: int | None = setting(None, "layer of the category directions (default: 3/4 of the depth)")
    condition_layer: int | None = setting(
        None, "layer the conditions read (default: chosen on val, every other layer from 1/5 to 1/2 of the depth)"
    )
    condition_kind: str = setting(
        "exclusive",
        "exclusive: a prompt fires the one category whose discriminant scores highest, by --margin; "
        "ovr: each category against the rest with a val threshold (several may fire)",
        choices=KINDS,
        flag="--condition",
    )
    margin: float | None = setting(
        None,
        f"exclusive conditions: lead over every other class's score (default: chosen on val from "
        f"{', '.join(map(str, MARGINS))})",
    )
    part: str = setting(
        "full",
        "ablate each category's full difference in means or its part orthogonal to the shared direction",
        choices=("full", "specific"),
    )
    per_category: int = setting(5, "harmful test prompts per category (the test split holds 5 of each)")
    n_harmless: int = setting(24, "harmless test prompts")
    max_new_tokens: int = setting(24, "greedy reply length (the organism's refusals open with the refusal)")
    judge: str = setting(DEFAULT_JUDGE, "judge of the replies", choices=JUDGE_CHOICES)
    shrinkage: float | None = setting(
        None,
        f"covariance shrinkage of the condition discriminants (default: chosen on val from "
        f"{', '.join(map(str, SHRINKAGES))})",
    )
    max_train_prompts: int | None = setting(
        None, "cap the train and val sets the directions and thresholds come from (default: all)"
    )
    batch_size: int = setting(32, "generation rows per batch")

    def __post_init__(self) -> None:
        for name in ("per_category", "n_harmless", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise SettingsError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if self.shrinkage is not None and not self.shrinkage > 0:
            raise SettingsError(f"--shrinkage must be > 0, got {self.shrinkage}.")
        if self.part not in ("full", "specific"):
            raise SettingsError(f"part must be 'full' or 'specific', got {self.part!r}.")
