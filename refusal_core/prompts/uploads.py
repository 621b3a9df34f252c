"""Prompt sets from uploaded bytes, parsed once per content and kept in a small bounded cache.

The dashboard hands over the uploaded file's name and bytes. The size limit is checked
before anything is parsed; the parsed set is cached under the SHA-256 of (name, column,
bytes), so the cache holds no copy of the upload itself and at most ``MAX_CACHED`` sets.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from refusal_core.prompts.limits import check_file_size
from refusal_core.prompts.loaders import load_prompt_file
from refusal_core.prompts.sets import PromptSet

__all__ = ["MAX_CACHED", "clear_upload_cache", "parse_prompt_upload"]

MAX_CACHED = 8
_cache: OrderedDict[str, PromptSet] = OrderedDict()
_lock = threading.Lock()


def _key(name: str, data: bytes, column: str | None) -> str:
    digest = hashlib.sha256()
    for part in (name.encode("utf-8"), b"\0", (column or "").encode("utf-8"), b"\0", data):
        digest.update(part)
    return digest.hexdigest()


def parse_prompt_upload(name: str, data: bytes, column: str | None = None) -> PromptSet:
    """A PromptSet from an uploaded file's bytes; errors name the user's file, not a temporary one."""
    base = Path(name).name or "upload.txt"
    check_file_size(len(data), base)
    key = _key(name, data, column)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / base
        path.write_bytes(data)
        prompts = load_prompt_file(path, column=column or None)
    parsed = PromptSet(
        name=f"file:{name}", instructions=prompts.instructions, categories=prompts.categories, source=name
    )
    with _lock:
        _cache[key] = parsed
        _cache.move_to_end(key)
        while len(_cache) > MAX_CACHED:
            _cache.popitem(last=False)
    return parsed


def clear_upload_cache() -> None:
    with _lock:
        _cache.clear()


def cached_count() -> int:
    with _lock:
        return len(_cache)
