"""The judge registry: every judge the CLI's ``--judge`` and the sidebar offer comes from here.

A judge is one module of this package that builds objects honouring
``judges.verdict.ReplyJudge`` (``verdicts(loaded, instructions, replies, ...) -> list[Verdict]``)
and registers them with :func:`register` when imported; :func:`judges` imports every module
of the package once, so a new file is found without a list to edit (a plug-in elsewhere
registers by being imported before the CLI or app runs). ``docs/judges.md`` shows a judge
added in a dozen lines.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from refusal_core.errors import SettingsError
from refusal_core.judges.verdict import LABELS, ReplyJudge

__all__ = [
    "BUILTIN_JUDGES",
    "DEFAULT_JUDGE",
    "JudgeEntry",
    "build_judge",
    "get_judge",
    "judge_names",
    "judges",
    "register",
    "unregister",
]

# Listed first, in this order (the CLI's choices and the sidebar follow it); plug-ins after.
BUILTIN_JUDGES = ("learned", "panel", "substring", "substring+broken", "refusal-score", "semantic")
# The judge every readout uses unless the user picks another: the learned judge, which matched the
# readers' labels more often than the panel on replies of interventions it was not fitted to
# ("complied or not" and broken recall, leave one intervention out; docs/judges.md).
DEFAULT_JUDGE = "learned"


@dataclass(frozen=True)
class JudgeEntry:
    """One registered judge.

    ``build(**options)`` returns a fresh judge (options: what that judge accepts, e.g. the
    substring judge's ``extra`` phrases). ``verdicts``: the verdicts it can give.
    ``needs_model``: it cannot judge without the model that wrote the replies.
    """

    name: str
    build: Callable[..., ReplyJudge]
    description: str
    verdicts: tuple[str, ...] = LABELS
    needs_model: bool = False

    def __post_init__(self) -> None:
        unknown = [label for label in self.verdicts if label not in LABELS]
        if unknown:
            raise ValueError(
                f"Judge {self.name!r} declares unknown verdicts {unknown}; verdicts are {', '.join(LABELS)}."
            )


_REGISTRY: dict[str, JudgeEntry] = {}
_LOADED = False


def register(entry: JudgeEntry) -> JudgeEntry:
    """Add a judge (a second registration under the same name replaces the first)."""
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _load_package() -> None:
    global _LOADED
    if _LOADED:
        return
    import refusal_core.judges as package

    for info in pkgutil.iter_modules(package.__path__):
        if info.name not in ("registry", "verdict", "semantic", "model_judges"):
            importlib.import_module(f"{package.__name__}.{info.name}")
    _LOADED = True


def judges() -> dict[str, JudgeEntry]:
    """Name -> entry, built-ins first in ``BUILTIN_JUDGES`` order, then plug-ins by name."""
    _load_package()
    first = [name for name in BUILTIN_JUDGES if name in _REGISTRY]
    return {name: _REGISTRY[name] for name in first + sorted(set(_REGISTRY) - set(first))}


def judge_names() -> tuple[str, ...]:
    return tuple(judges())


def get_judge(name: str) -> JudgeEntry:
    found = judges()
    if name not in found:
        raise SettingsError(f"Unknown judge {name!r}; choose one of {', '.join(found)}.")
    return found[name]


def build_judge(name: str, **options) -> ReplyJudge:
    """A fresh judge by registered name; unknown names and options raise SettingsError."""
    entry = get_judge(name)
    try:
        return entry.build(**options)
    except TypeError as err:
        raise SettingsError(f"Judge {name!r} does not take the options {sorted(options)}: {err}.") from None
