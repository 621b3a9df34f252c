"""Percentile bootstrap intervals of per-prompt means, seeded and shared across variants.

Every variant of an experiment is measured on the same prompts, so one matrix of resampled
prompt indices is drawn per (number of prompts, seed) and used for every variant: the
intervals are reproducible, and two variants' intervals come from the same resamples.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from refusal_core.errors import SettingsError

__all__ = ["Estimate", "bootstrap_estimate", "resample_indices"]


@dataclass(frozen=True)
class Estimate:
    """A per-prompt mean (``value``) with its percentile bootstrap interval [``low``, ``high``].

    ``n`` is the number of prompts; ``level`` the interval's nominal coverage (0.95).
    """

    value: float
    low: float
    high: float
    n: int
    level: float

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "level": self.level}

    @staticmethod
    def from_dict(data: dict) -> Estimate:
        return Estimate(
            float(data["value"]), float(data["low"]), float(data["high"]), int(data["n"]), float(data["level"])
        )


@lru_cache(maxsize=32)
def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` prompt indices drawn with replacement by ``numpy.random.default_rng(seed)``."""
    if n < 1:
        raise SettingsError("A bootstrap needs at least one prompt.")
    if n_boot < 1:
        raise SettingsError(f"n_boot must be at least 1, got {n_boot}.")
    indices = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    indices.setflags(write=False)
    return indices


def bootstrap_estimate(values: Sequence[float], n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> Estimate:
    """The mean of ``values`` (one number per prompt: 0/1 for a verdict, nats for KL) with the
    ``level`` percentile interval of the means of ``n_boot`` resamples of the prompts."""
    if not 0 < level < 1:
        raise SettingsError(f"The interval level must be between 0 and 1, got {level}.")
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise SettingsError("A bootstrap needs a non-empty list of per-prompt values.")
    if not np.isfinite(data).all():
        raise ValueError("Per-prompt values contain NaN or infinite numbers.")
    means = data[resample_indices(data.size, n_boot, seed)].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return Estimate(float(data.mean()), float(low), float(high), int(data.size), float(level))
