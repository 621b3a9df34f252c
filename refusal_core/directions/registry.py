"""The direction-method registry: one contract that every method honours.

A method is one module of this package that defines a settings dataclass (every field
made with ``refusal_core.settings.setting``, so it carries a description) and ``fit(data: FitInput,
settings) -> DirectionSet``, and registers itself with :func:`register` when imported;
:func:`methods` imports every module of the package once, so a new file is found without
a list to edit (a plugin elsewhere registers by being imported before the CLI or app runs). The CLI's ``directions``
subcommands and the dashboard's method controls are generated from the registry
(settings fields become argparse options and Streamlit widgets), so adding a method is one
file plus its test; ``tests/unit/test_methods.py`` runs every registered method through the
same checks.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from refusal_core.activations.extract import Activations, extract_activations
from refusal_core.activations.separation import layer_points
from refusal_core.directions.base import DirectionSet
from refusal_core.directions.provenance import build_provenance
from refusal_core.model.loading import LoadedModel
from refusal_core.progress import Progress
from refusal_core.prompts.chat import ChatFormat
from refusal_core.prompts.sets import PromptSet

# The one settings declaration, re-exported here for the method modules and older imports.
from refusal_core.settings import Setting, setting, settings_fields

__all__ = [
    "BUILTIN_METHODS",
    "DirectionMethod",
    "FitInput",
    "Setting",
    "get_method",
    "methods",
    "register",
    "setting",
    "settings_fields",
    "unregister",
]

# Method modules listed first, in this order (the CLI's subcommands and the pages follow it).
# ``optimize`` ablates while it learns, so it lives above the interventions, in
# ``refusal_core.selection.optimize``, and registers when the CLI or the app imports it.
BUILTIN_METHODS = ("dim", "som", "clustering", "optimize")
Reads = Literal["activations", "layer", "init"]


@dataclass
class FitInput:
    """What a method may read: the model, both prompt sets and, computed on first use (or
    given, as the dashboard does), their activations at every post-instruction position.

    ``layer``/``position`` say where methods that read one layer (``reads="layer"``) take
    the representations; ``init`` is the start direction of methods that refine one
    (``reads="init"``). ``progress(label)`` gives a ``Progress`` callback for each stage.
    """

    loaded: LoadedModel
    harmful: PromptSet
    harmless: PromptSet
    harmful_acts: Activations | None = None
    harmless_acts: Activations | None = None
    layer: int | None = None
    position: int = -1
    init: DirectionSet | None = None
    chat: ChatFormat | None = None
    batch_size: int = 16
    progress: Callable[[str], Progress | None] = lambda label: None
    # Layer numbers to extract (``--layers``; default all): methods read layers by number.
    layers: tuple[int, ...] | None = None

    def activations(self) -> tuple[Activations, Activations]:
        """Harmful and harmless activations (extracted once, through the on-disk cache)."""
        if self.harmful_acts is None or self.harmless_acts is None:
            self.harmful_acts, self.harmless_acts = (
                extract_activations(
                    self.loaded,
                    prompts.instructions,
                    chat=self.chat,
                    batch_size=self.batch_size,
                    progress=self.progress(f"{which} activations"),
                    layers=self.layers,
                )
                for which, prompts in (("harmful", self.harmful), ("harmless", self.harmless))
            )
        return self.harmful_acts, self.harmless_acts

    def layer_points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([n_harmful, d], [n_harmless, d])`` block inputs at ``layer`` and ``position``."""
        if self.layer is None:
            raise ValueError("This method reads one layer; give the layer (--layer).")
        return layer_points(*self.activations(), self.layer, self.position)

    def provenance(self, method: str, settings: object | None = None, at_layer: bool = False) -> dict:
        """The one provenance builder's record for these prompt sets (with the settings as params)."""
        params = dataclasses.asdict(settings) if settings is not None else {}
        where = {"layer": self.layer, "position": self.position} if at_layer else {}
        return build_provenance(self.loaded.spec, self.harmful, self.harmless, method, **where, **params)


@dataclass(frozen=True)
class DirectionMethod:
    """A registered method: ``fit(FitInput, settings) -> DirectionSet``.

    ``name`` is the CLI subcommand, ``title`` the dashboard's label, ``help`` one line for
    both; ``settings`` the settings dataclass; ``reads`` what ``fit`` needs beyond the prompt
    sets. ``summary(directions) -> (payload, lines)`` gives the CLI's JSON payload and
    human-readable lines (default: the names).
    """

    name: str
    title: str
    help: str
    settings: type
    fit: Callable[[FitInput, Any], DirectionSet]
    reads: Reads = "activations"
    summary: Callable[[DirectionSet], tuple[dict, list[str]]] | None = None

    def describe(self, directions: DirectionSet) -> tuple[dict, list[str]]:
        if self.summary is not None:
            return self.summary(directions)
        return {"names": list(directions.names)}, [f"  {name}" for name in directions.names]


_METHODS: dict[str, DirectionMethod] = {}


def register(method: DirectionMethod) -> DirectionMethod:
    """Add (or replace) a method; its settings must describe every field."""
    settings_fields(method.settings)
    _METHODS[method.name] = method
    return method


def unregister(name: str) -> None:
    _METHODS.pop(name, None)


def methods() -> dict[str, DirectionMethod]:
    """Every registered method by name, the built-in ones first, then the package's other method
    modules (found by name, so adding a method is adding its file), then plugins."""
    package = __name__.rpartition(".")[0]
    found = sorted(info.name for info in pkgutil.iter_modules(importlib.import_module(package).__path__))
    builtin = [name for name in BUILTIN_METHODS if name in found]
    for module in [*builtin, *(name for name in found if name not in BUILTIN_METHODS)]:
        importlib.import_module(f"{package}.{module}")
    return dict(sorted(_METHODS.items(), key=lambda item: _builtin_rank(item[1])))


def _builtin_rank(method: DirectionMethod) -> int:
    """Where a method's module stands in BUILTIN_METHODS (others after, in registration order)."""
    module = getattr(method.fit, "__module__", "").rpartition(".")[2]
    return BUILTIN_METHODS.index(module) if module in BUILTIN_METHODS else len(BUILTIN_METHODS)


def get_method(name: str) -> DirectionMethod:
    known = methods()
    if name not in known:
        raise ValueError(f"Unknown direction method {name!r}; registered: {', '.join(known)}.")
    return known[name]
