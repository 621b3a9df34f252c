"""A :class:`PromptSet` is an immutable, hashable list of instructions with optional category
labels; deterministic stratified splits and category-balanced samples of it.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from refusal_core.errors import SettingsError, UserError

__all__ = [
    "SPLIT_SEED",
    "as_prompt_set",
    "check_choice",
    "PromptSet",
    "PromptSetError",
    "sample_prompts",
    "split_indices",
    "split_prompt_set",
]


def sample_prompts(prompts, max_prompts: int):
    """At most ``max_prompts`` of a PromptSet, taken round-robin over its categories.

    Built-in files are sorted by category, so the first ``n`` would cover only a few
    categories; round-robin keeps every category represented. The kept items stay in file
    order, and the choice is deterministic.
    """
    if max_prompts < 1:
        raise SettingsError(f"max_prompts must be at least 1, got {max_prompts}.")
    if len(prompts) <= max_prompts:
        return prompts
    by_category: dict[Any, list[int]] = OrderedDict()
    for index, category in enumerate(prompts.categories):
        by_category.setdefault(category, []).append(index)
    queues = [list(reversed(indices)) for indices in by_category.values()]
    chosen: list[int] = []
    while len(chosen) < max_prompts:
        for queue in queues:
            if queue and len(chosen) < max_prompts:
                chosen.append(queue.pop())
    return prompts.subset(sorted(chosen), name=f"{prompts.name}[{max_prompts}]")


BUILTIN_KINDS: tuple[str, ...] = ("harmful", "harmless")


SPLITS: tuple[str, ...] = ("train", "val", "test")


SPLIT_FRACTIONS: dict[str, float] = {"train": 0.6, "val": 0.2, "test": 0.2}


SPLIT_SEED = 0


class PromptSetError(UserError, ValueError):
    """A prompt set could not be built or loaded; the message says why and how to fix it."""


@dataclass(frozen=True)
class PromptSet:
    """An immutable, non-empty list of instructions with one optional category each.

    ``name`` is a short label for the UI (``"builtin:harmful/train"``); ``source`` says
    where the data came from (a file path, a dataset id, the package data file).
    """

    name: str
    instructions: tuple[str, ...]
    categories: tuple[str | None, ...] = field(default=())
    source: str = ""

    def __post_init__(self) -> None:
        # Accept any sequence but store tuples, so instances stay hashable and immutable.
        object.__setattr__(self, "instructions", tuple(self.instructions))
        cats = tuple(self.categories) if self.categories else (None,) * len(self.instructions)
        object.__setattr__(self, "categories", cats)
        self._validate()

    def _validate(self) -> None:
        if not self.instructions:
            raise PromptSetError(f"Prompt set {self.name!r} is empty; it needs at least one instruction.")
        if len(self.categories) != len(self.instructions):
            raise PromptSetError(
                f"Prompt set {self.name!r} has {len(self.instructions)} instructions but "
                f"{len(self.categories)} categories; give one category (or None) per instruction."
            )
        for i, text in enumerate(self.instructions):
            if not isinstance(text, str) or not text.strip():
                raise PromptSetError(
                    f"Prompt set {self.name!r}: instruction #{i} is {text!r}; "
                    "every instruction must be a non-empty string."
                )
        for i, cat in enumerate(self.categories):
            if cat is not None and not isinstance(cat, str):
                raise PromptSetError(
                    f"Prompt set {self.name!r}: category #{i} is {cat!r}; categories must be strings or None."
                )

    def __len__(self) -> int:
        return len(self.instructions)

    def content_hash(self) -> str:
        """SHA-256 hex digest of the instructions and categories (not name/source).

        Canonical JSON keeps the digest identical across runs, machines and Python
        versions, so it can key caches of activations computed from this set.
        """
        payload = json.dumps(
            {"instructions": list(self.instructions), "categories": list(self.categories)},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def subset(self, indices: Iterable[int], name: str | None = None) -> PromptSet:
        """A new set with the items at ``indices``, in the order given."""
        idx = [self._index(i) for i in indices]
        if not idx:
            raise PromptSetError(f"subset() of {self.name!r} got no indices; a prompt set cannot be empty.")
        return PromptSet(
            name=name or f"{self.name}[subset:{len(idx)}]",
            instructions=tuple(self.instructions[i] for i in idx),
            categories=tuple(self.categories[i] for i in idx),
            source=self.source,
        )

    def _index(self, i: Any) -> int:
        # bool is an int subclass; rejecting it catches boolean-mask-vs-index mix-ups.
        if isinstance(i, bool):
            raise PromptSetError(f"subset() needs integer indices, got the boolean {i!r}.")
        try:
            j = operator.index(i)  # accepts numpy/torch integer scalars too
        except TypeError:
            raise PromptSetError(f"subset() needs integer indices, got {i!r}.") from None
        if not -len(self) <= j < len(self):
            raise PromptSetError(f"subset() index {j} is out of range for {self.name!r} with {len(self)} items.")
        return j

    def head(self, n: int) -> PromptSet:
        """The first ``n`` items (all of them if ``n >= len(self)``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PromptSetError(f"head() needs a positive integer, got {n!r}.")
        if n >= len(self):
            return self
        return self.subset(range(n), name=f"{self.name}[:{n}]")

    def category_counts(self) -> dict[str | None, int]:
        """How many items each category has, in first-seen order (for UI summaries)."""
        counts: dict[str | None, int] = {}
        for cat in self.categories:
            counts[cat] = counts.get(cat, 0) + 1
        return counts


def _rank_key(seed: int, category: str | None, text: str) -> str:
    # A content hash, not a PRNG stream: the order can never change with numpy or Python
    # versions, and adding one prompt does not reshuffle the rest of its category.
    return hashlib.sha256(f"{seed}\x1f{category or ''}\x1f{text}".encode()).hexdigest()


def _split_sizes(n: int) -> tuple[int, int, int]:
    """Train/val/test counts for a category of ``n`` items (val/test get >=1 when n >= 3)."""
    n_val = round(n * SPLIT_FRACTIONS["val"])
    n_test = round(n * SPLIT_FRACTIONS["test"])
    if n >= 3:
        # Guarantee every split sees every category, which stratification promises.
        n_val, n_test = max(1, n_val), max(1, n_test)
    return n - n_val - n_test, n_val, n_test


def split_indices(prompts: PromptSet, seed: int = SPLIT_SEED) -> dict[str, tuple[int, ...]]:
    """Deterministic stratified train/val/test indices (0.6/0.2/0.2 within each category).

    Indices inside each split are sorted, so split sets keep the original file order.
    """
    by_cat: dict[str | None, list[int]] = {}
    for i, cat in enumerate(prompts.categories):
        by_cat.setdefault(cat, []).append(i)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for cat in sorted(by_cat, key=lambda c: c or ""):
        ranked = sorted(by_cat[cat], key=lambda i: _rank_key(seed, cat, prompts.instructions[i]))
        n_train, n_val, _ = _split_sizes(len(ranked))
        out["train"] += ranked[:n_train]
        out["val"] += ranked[n_train : n_train + n_val]
        out["test"] += ranked[n_train + n_val :]
    return {s: tuple(sorted(v)) for s, v in out.items()}


def split_prompt_set(prompts: PromptSet, split: str, seed: int = SPLIT_SEED) -> PromptSet:
    """One split of ``prompts`` (``"all"`` returns it unchanged); see :func:`split_indices`."""
    split = check_choice("split", split, ("all", *SPLITS))
    if split == "all":
        return prompts
    idx = split_indices(prompts, seed)[split]
    if not idx:
        raise PromptSetError(
            f"Split {split!r} of {prompts.name!r} is empty: {len(prompts)} prompts are too few to split; "
            "use split 'all'."
        )
    return prompts.subset(idx, name=f"{prompts.name}/{split}")


def check_choice(what: str, value: str, valid: Sequence[str]) -> str:
    norm = value.strip().lower() if isinstance(value, str) else value
    if norm not in valid:
        raise PromptSetError(f"Unknown {what} {value!r}; valid values are: {', '.join(valid)}.")
    return norm


def as_prompt_set(prompts: PromptSet | Sequence[str], name: str = "prompts") -> PromptSet:
    """``prompts`` itself, or a list of instructions as a PromptSet without categories."""
    return prompts if isinstance(prompts, PromptSet) else PromptSet(name=name, instructions=tuple(prompts))
