"""Requantizing an edited weight without rounding the removed direction back in.

A residual writer ``W'`` with the direction ``u`` projected out has ``uᵀ W' = 0`` exactly,
but its quantized copy ``Q(W')`` does not: each element is rounded to the nearest level of
its block, and the rounding errors of a column add up along ``u`` like a random walk. With
4-bit blocks (SmolLM2's GGUF is Q4_1) that leftover is a visible fraction of what the edit
removed.

``balanced_quantize`` keeps the type, the block scales and offsets of plain quantization and
changes only which of an element's two neighbouring levels it takes. For every column (the
elements that ``u`` sums over), it lists the elements whose other level moves the column's
component towards zero, orders them by added squared error per unit of correction, and
flips the cheapest ones while each flip still shrinks what is left, in a few passes (each
pass only offers flips smaller than twice what is left, so it ends near the finest step). Every element stays within one step of its value (the level just
below or just above it), so the tensor's error grows only a little, and only where it buys
the direction back.

Only ``Q8_0`` and ``Q4_1`` blocks are written here (the types of the shipped GGUF); any other
type returns None, and the caller quantizes it the plain way.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BALANCED_TYPES", "balanced_quantize", "levels"]

BLOCK = 32
BALANCED_TYPES = ("Q8_0", "Q4_1")
_PASSES = 4
_CHUNK = 4096


def _f16(values: np.ndarray) -> np.ndarray:
    """The value a float16 field of the block stores, back in float64."""
    return values.astype(np.float16).astype(np.float64)


def levels(values: np.ndarray, type_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(continuous level, nearest level, scale, offset, lowest, highest) per element of ``values``
    ``[rows, cols]``, with blocks of 32 along ``cols`` and scale and offset as float16 stores them."""
    rows, cols = values.shape
    blocks = values.astype(np.float64).reshape(rows, cols // BLOCK, BLOCK)
    if type_name == "Q8_0":
        scale = _f16(np.abs(blocks).max(axis=-1, keepdims=True) / 127)
        offset = np.zeros_like(scale)
        low, high = -127, 127
    elif type_name == "Q4_1":
        low_value, high_value = blocks.min(axis=-1, keepdims=True), blocks.max(axis=-1, keepdims=True)
        scale, offset = _f16((high_value - low_value) / 15), _f16(low_value)
        low, high = 0, 15
    else:
        raise ValueError(f"no balanced rounding for {type_name}")
    safe = np.where(scale == 0, 1.0, scale)
    exact = np.where(scale == 0, 0.0, (blocks - offset) / safe)
    nearest = np.clip(np.rint(exact), low, high)
    shape = (rows, cols)
    return (
        exact.reshape(shape),
        nearest.reshape(shape),
        np.broadcast_to(scale, blocks.shape).reshape(shape),
        np.broadcast_to(offset, blocks.shape).reshape(shape),
        low,
        high,
    )


def _balance_columns(exact, chosen, scale, offset, u, low, high) -> np.ndarray:
    """``chosen`` levels ``[n, g]`` re-picked so that each column's ``uᵀ (scale * level + offset)`` is near 0."""
    chosen = chosen.copy()
    weight = u[:, None] * scale  # what one level step of an element adds to its column's component
    for _ in range(_PASSES):
        component = (u[:, None] * (scale * chosen + offset)).sum(axis=0)
        step = np.where(exact >= chosen, 1.0, -1.0)
        other = chosen + step
        other = np.where((other < low) | (other > high), chosen - step, other)
        gain = weight * (other - chosen)
        cost = scale**2 * ((other - exact) ** 2 - (chosen - exact) ** 2)
        size = np.abs(component)[None, :]
        # a flip helps when it moves the component towards zero without passing beyond its mirror image
        useful = (gain * component[None, :] < 0) & (other >= low) & (other <= high) & (np.abs(gain) < 2 * size)
        ratio = np.where(useful, cost / np.where(useful, np.abs(gain), 1.0), np.inf)
        order = np.argsort(ratio, axis=0, kind="stable")
        sorted_gain = np.take_along_axis(np.where(useful, np.abs(gain), 0.0), order, axis=0)
        # flip the cheapest ones while each flip still shrinks what is left
        shrinks = (np.cumsum(sorted_gain, axis=0) - sorted_gain / 2 < size) & (sorted_gain > 0)
        take_sorted = np.logical_and.accumulate(shrinks, axis=0)
        take = np.zeros_like(take_sorted)
        np.put_along_axis(take, order, take_sorted, axis=0)
        chosen = np.where(take, other, chosen)
    return chosen


def _pack(type_name: str, chosen: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """ggml's block bytes: Q8_0 = f16 scale + 32 int8; Q4_1 = f16 scale + f16 min + 16 bytes of nibbles
    (element ``j`` in the low nibble of byte ``j``, element ``j + 16`` in its high nibble)."""
    rows, cols = chosen.shape
    n_blocks = cols // BLOCK
    first = (slice(None), slice(None), slice(0, 1))
    scale16 = scale.reshape(rows, n_blocks, BLOCK)[first].astype(np.float16).view(np.uint8)
    q = chosen.reshape(rows, n_blocks, BLOCK)
    if type_name == "Q8_0":
        body = [scale16, q.astype(np.int8).view(np.uint8)]
    else:
        min16 = offset.reshape(rows, n_blocks, BLOCK)[first].astype(np.float16).view(np.uint8)
        nibbles = q.astype(np.uint8)
        body = [scale16, min16, nibbles[..., :16] | (nibbles[..., 16:] << np.uint8(4))]
    return np.concatenate(body, axis=-1).reshape(rows, -1)


def balanced_quantize(values: np.ndarray, type_name: str, direction: np.ndarray, axis: int) -> np.ndarray | None:
    """``values`` ``[rows, cols]`` (GGUF NumPy layout, blocks along ``cols``) quantized to
    ``type_name`` with the levels chosen to keep the component along the unit ``direction``
    (which indexes ``values`` along ``axis``) near zero; the same bytes layout as
    ``gguf.quants.quantize``. None for a type or shape this module does not write."""
    if type_name not in BALANCED_TYPES or values.ndim != 2 or values.shape[1] % BLOCK:
        return None
    u = np.asarray(direction, dtype=np.float64)
    pieces = []
    along_rows = axis % 2 == 1  # the direction runs along each row: each row is balanced on its own
    for start in range(0, values.shape[0 if along_rows else 1], _CHUNK):
        part = slice(start, start + _CHUNK)  # a multiple of the block size, so chunks of columns keep whole blocks
        chunk = values[part, :] if along_rows else values[:, part]
        exact, chosen, scale, offset, low, high = levels(chunk, type_name)
        if along_rows:
            balanced = _balance_columns(exact.T, chosen.T, scale.T, offset.T, u, low, high).T
        else:
            balanced = _balance_columns(exact, chosen, scale, offset, u, low, high)
        pieces.append(_pack(type_name, balanced, scale, offset))
    return np.concatenate(pieces, axis=0 if along_rows else 1)
