"""Which layers an extraction records: layer numbers, the ``--layers 10,12,14-18`` syntax,
and their checks.

Layer number ``l < n_layers`` is the residual stream entering decoder block ``l``;
``n_layers`` is the output of the last block. The default is all of them, ``0..n_layers``.
"""

from __future__ import annotations

from typing import Sequence

from refusal_core.errors import SettingsError

__all__ = ["all_layers", "check_layers", "parse_layer_spec"]


def all_layers(n_layers: int) -> tuple[int, ...]:
    """Every layer number of a model with ``n_layers`` blocks: ``0..n_layers``."""
    return tuple(range(n_layers + 1))


def parse_layer_spec(spec: str) -> tuple[int, ...]:
    """``"10,12,14-18"`` -> ``(10, 12, 14, 15, 16, 17, 18)``: numbers and inclusive ranges."""
    layers: list[int] = []
    for part in (piece.strip() for piece in spec.split(",")):
        low, dash, high = part.partition("-")
        try:
            if dash:
                first, last = int(low), int(high)
                if last < first:
                    raise ValueError
                layers.extend(range(first, last + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise SettingsError(
                f"--layers {spec!r}: {part!r} is not a layer number or a range; write e.g. 10,12,14-18."
            ) from None
    return tuple(layers)


def check_layers(layers: Sequence[int] | None, n_layers: int) -> tuple[int, ...]:
    """The sorted, distinct layer numbers to record (all for None); out-of-range ones refused."""
    if layers is None:
        return all_layers(n_layers)
    chosen = tuple(sorted({int(layer) for layer in layers}))
    bad = [layer for layer in chosen if not 0 <= layer <= n_layers]
    if not chosen or bad:
        raise SettingsError(
            f"Layers {bad or list(layers)} cannot be recorded: this model has layer numbers 0..{n_layers} "
            f"(block inputs 0..{n_layers - 1}, and {n_layers} for the last block's output); choose among them."
        )
    return chosen
