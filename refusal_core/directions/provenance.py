"""The one provenance builder: every direction set records the model, layer, position, method,
the hash of the data it came from and its parameters, built here the same way by every caller.
"""

from __future__ import annotations

import hashlib

__all__ = ["data_hash"]


def data_hash(*prompt_sets) -> str:
    """A short hash of the prompt sets' contents, for provenance records."""
    digest = hashlib.sha256()
    for prompts in prompt_sets:
        digest.update(prompts.content_hash().encode())
    return digest.hexdigest()[:16]
