"""The one provenance builder: every direction set records the model, the layer and position
it was read at, the method, the hash of the prompt sets it came from and its parameters,
built here in the same way by the CLI, the report, the dashboard and the scripts, so the
same data always gets the same ``data_hash``.
"""

from __future__ import annotations

from refusal_core.activations.cache import content_key
from refusal_core.prompts.sets import PromptSet

__all__ = ["PROVENANCE_KEYS", "build_provenance", "data_hash"]

# The keys every direction's provenance has (layer and position may be None for a
# direction that is not read at one place, such as an imported one).
PROVENANCE_KEYS = ("model", "layer", "position", "method", "data_hash", "params")


def data_hash(harmful: PromptSet, harmless: PromptSet) -> str:
    """A short hash of both prompt sets' contents (instructions and categories, in order)."""
    return content_key("data", harmful.content_hash(), harmless.content_hash())[:16]


def build_provenance(
    model: str,
    harmful: PromptSet,
    harmless: PromptSet,
    method: str,
    layer: int | None = None,
    position: int | None = None,
    **params: object,
) -> dict:
    """The provenance record of directions made by ``method`` from two prompt sets.

    ``params`` are the method's settings; the prompt counts are always among them.
    Methods that make one direction per cell or neuron add their own per-direction keys
    (``layer``, ``position``, ``neuron``...) on top of this record.
    """
    return {
        "model": model,
        "layer": layer,
        "position": position,
        "method": method,
        "data_hash": data_hash(harmful, harmless),
        "params": {"n_harmful": len(harmful), "n_harmless": len(harmless), **params},
    }
