"""Where the toolkit keeps its on-disk cache."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]

_DEFAULT = Path(__file__).resolve().parent.parent / "cache"


def cache_dir() -> Path:
    """The cache root: ``$REFUSAL_ATLAS_CACHE`` if set, else ``cache/`` beside the package.

    Everything under it is derived data with content-hash keys, so it is safe to delete.
    """
    return Path(os.environ.get("REFUSAL_ATLAS_CACHE", _DEFAULT))
