"""How a search trial encodes a set of ``k`` distinct pool directions as Optuna parameters.

Trial parameter ``pick_i`` (i = 0 .. k-1) is an index into the pool names *not yet picked*,
kept in pool order: ``pick_0`` chooses among all ``n`` names, ``pick_1`` among the ``n - 1``
left, and so on. Every parameter has one fixed categorical range (``0 .. n-1-i``), so the
search space is static (TPE, resumed studies and several workers see the same
distributions), and every trial names ``k`` distinct directions by construction: none is
spent on a repeat.

An earlier encoding (``slot_i`` over all pool names, repeats pruned) wasted most trials for
k >= 4; its studies are told apart by ``ENCODING``, which is part of every default study
name and stored on each study (``check_encoding``), so the two are never mixed.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

from refusal_core.errors import SettingsError

__all__ = [
    "ENCODING",
    "check_encoding",
    "decode_picks",
    "enqueue_every_subset",
    "picks_for",
    "suggest_subset",
    "trial_names",
]

ENCODING = "distinct-picks-v2"
_PREFIX = "pick_"


def suggest_subset(trial, names: Sequence[str], k: int) -> list[str]:
    """Ask ``trial`` for ``k`` distinct names of ``names``, in the order picked."""
    return decode_picks(
        [trial.suggest_categorical(f"{_PREFIX}{i}", tuple(range(len(names) - i))) for i in range(k)], names
    )


def decode_picks(picks: Sequence[int], names: Sequence[str]) -> list[str]:
    """The names that the indices ``picks`` choose, each from the names left after the earlier picks."""
    left = list(names)
    return [left.pop(index) for index in picks]


def picks_for(subset: Sequence[str], names: Sequence[str]) -> list[int]:
    """The indices that pick ``subset`` (in its order) from ``names``; the inverse of ``decode_picks``."""
    left, picks = list(names), []
    for name in subset:
        picks.append(left.index(name))
        left.remove(name)
    return picks


def trial_names(params: dict, names: Sequence[str]) -> list[str] | None:
    """The sorted names a trial's parameters pick, or None when it holds no complete pick."""
    picks = []
    while f"{_PREFIX}{len(picks)}" in params:
        picks.append(params[f"{_PREFIX}{len(picks)}"])
    return sorted(decode_picks(picks, names)) if picks else None


def enqueue_every_subset(study, names: Sequence[str], k: int) -> int:
    """Queue each of the C(n, k) subsets once, in pool order; returns how many were queued.

    Used when the trial budget covers every subset: the search is then an exhaustive
    evaluation rather than a sample that may draw a set twice.
    """
    for subset in itertools.combinations(names, k):
        params = {f"{_PREFIX}{i}": pick for i, pick in enumerate(picks_for(subset, names))}
        study.enqueue_trial(params, skip_if_exists=True)
    return math.comb(len(names), k)


def check_encoding(study) -> None:
    """Mark a new study with ``ENCODING``; refuse to resume one made with another encoding."""
    stored = study.user_attrs.get("subset_encoding")
    if stored == ENCODING:
        return
    if stored is None and not study.get_trials(deepcopy=False):
        study.set_user_attr("subset_encoding", ENCODING)
        return
    raise SettingsError(
        f"Study {study.study_name} was made by an older subset search ({stored or 'slot_i over all names, repeats pruned'}) "
        f"whose trials cannot be mixed with this one's ({ENCODING}); give another --study name, or delete its storage."
    )
