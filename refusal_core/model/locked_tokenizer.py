"""A tokenizer shared between threads: every use holds the model's lock, and it cannot be changed.

Hugging Face fast tokenizers keep their padding and truncation settings inside the Rust
tokenizer and switch them on every call, so two threads tokenizing at once fail with
``RuntimeError: Already borrowed``. A Streamlit app shares one loaded model, and its
tokenizer, between every browser session. ``LoadedModel`` therefore hands out its tokenizer
wrapped in ``LockedTokenizer``: each method call and attribute read runs under
``model_lock(model)`` (a re-entrant lock, so code that already holds it for a forward pass
tokenizes without waiting), and setting an attribute raises, so per-call options such as
``padding_side="left"`` must be passed as arguments instead of changing the shared object.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

__all__ = ["LockedTokenizer", "unwrap_tokenizer"]


class LockedTokenizer:
    """Proxy of ``tokenizer`` whose every call and attribute read holds ``lock``."""

    __slots__ = ("_tokenizer", "_lock")

    def __init__(self, tokenizer: Any, lock: threading.RLock) -> None:
        object.__setattr__(self, "_tokenizer", unwrap_tokenizer(tokenizer))
        object.__setattr__(self, "_lock", lock)

    @property
    def unwrapped(self) -> Any:
        """The underlying tokenizer, for code that holds the lock itself."""
        return self._tokenizer

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            value = getattr(self._tokenizer, name)
        if callable(value) and not isinstance(value, type):
            return self._locked(value)
        return value

    def _locked(self, method):
        @functools.wraps(method)
        def call(*args, **kwargs):
            with self._lock:
                return method(*args, **kwargs)

        return call

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._tokenizer)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            f"The tokenizer is shared by every session of this model; do not set {name!r} on it. "
            "Pass per-call options (e.g. padding_side='left') as arguments instead."
        )

    def __repr__(self) -> str:
        return f"LockedTokenizer({self._tokenizer!r})"


def unwrap_tokenizer(tokenizer: Any) -> Any:
    """The plain tokenizer behind a LockedTokenizer (or ``tokenizer`` itself)."""
    return tokenizer.unwrapped if isinstance(tokenizer, LockedTokenizer) else tokenizer
