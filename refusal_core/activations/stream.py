"""Activations written into their cache file batch by batch, and read back memory-mapped.

The cache file is an ordinary safetensors file (one float32 tensor ``acts`` and the
metadata the cache reads, ``digest`` included), so entries written whole by
``cache.save_entry`` and entries streamed here read alike:

* :class:`StreamSink` writes the header first, with the digest's place held by a
  placeholder of the same length, then appends each batch's rows as they come and
  feeds the same bytes to the digest; :meth:`StreamSink.finish` writes the real digest
  into the header and moves the file into place with one ``os.replace``. Until then the
  file is a hidden ``.NAME.*.tmp`` beside the entry, which no reader opens, so a crash
  leaves no half file under the entry's name; a file cut short or altered later fails
  the size or digest check and reads as a miss.
* The result is returned memory-mapped from the finished file (``torch.from_file``,
  private mapping: changes never reach the file), so the process holds one batch at a
  time, never the whole result.
* A write that fails (disk full, cache folder gone) loses nothing: the rows already
  written are read back into memory, the rest are kept there, and a warning says why.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch

from refusal_core.activations.cache import atomic_target, load_entry
from refusal_core.atomic import FILE_MODE

__all__ = ["MemorySink", "StreamSink", "load_streamed_entry"]

NAME = "acts"
_DIGEST_PLACEHOLDER = "0" * 64  # a sha256 hex digest has this length
_ITEM = 4  # float32


def _prefix(shape: tuple[int, ...]) -> bytes:
    """What ``cache.tensor_digest`` hashes before a float32 tensor's bytes."""
    return f"{NAME}|{tuple(shape)}|{torch.float32}".encode()


def _header(shape: tuple[int, ...], metadata: dict[str, str]) -> bytes:
    size = _ITEM
    for extent in shape:
        size *= extent
    header = {"__metadata__": metadata, NAME: {"dtype": "F32", "shape": list(shape), "data_offsets": [0, size]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


def _map(path: str | Path, data_start: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor at ``data_start`` of ``path``, memory-mapped (pages read when touched)."""
    count = 1
    for extent in shape:
        count *= extent
    flat = torch.from_file(str(path), shared=False, size=(data_start // _ITEM) + count, dtype=torch.float32)
    return flat[data_start // _ITEM :].view(shape)


def _write_all(handle, data: memoryview) -> None:
    """Write every byte of ``data`` (a raw file's ``write`` may write fewer)."""
    data = data.cast("B")
    while data:
        written = handle.write(data)
        if not written:
            raise OSError("nothing was written")
        data = data[written:]


class MemorySink:
    """Batches copied into one preallocated tensor (no cache file)."""

    warning: str | None = None

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.result = torch.empty(shape)
        self.done = 0

    def write(self, rows: torch.Tensor) -> None:
        self.result[self.done : self.done + rows.shape[0]] = rows
        self.done += int(rows.shape[0])

    def finish(self) -> torch.Tensor:
        if self.done != self.result.shape[0]:
            raise RuntimeError(f"{self.done} of {self.result.shape[0]} rows were written.")
        return self.result

    def close(self) -> None:
        pass


class StreamSink:
    """Batches appended to the cache entry's temporary file; the entry appears whole at :meth:`finish`."""

    def __init__(self, path: Path, shape: tuple[int, ...], metadata: dict[str, str]) -> None:
        self.path, self.shape, self.done = Path(path), tuple(shape), 0
        self.metadata = {**metadata, "digest": _DIGEST_PLACEHOLDER}
        self.warning: str | None = None
        self._memory: MemorySink | None = None
        self._digest = hashlib.sha256(_prefix(self.shape))
        self._tmp: str | None = None
        self._handle = None
        try:
            self._tmp = atomic_target(self.path)
            self._handle = open(self._tmp, "wb", buffering=0)  # unbuffered: a failed write fails here
            self._header = _header(self.shape, self.metadata)
            _write_all(self._handle, memoryview(self._header))
        except OSError as err:
            self._fall_back(err)

    def write(self, rows: torch.Tensor) -> None:
        """Append one batch's rows (``[batch, *shape[1:]]``, float32, on CPU)."""
        rows = rows.detach().to("cpu", torch.float32).contiguous()
        if tuple(rows.shape[1:]) != self.shape[1:]:
            raise ValueError(f"Rows of shape {tuple(rows.shape)} do not fit a result of shape {self.shape}.")
        if self._memory is None:
            data = memoryview(rows.reshape(-1).view(torch.uint8).numpy())
            try:
                _write_all(self._handle, data)
                self._digest.update(data)
                self.done += int(rows.shape[0])
                return
            except OSError as err:
                self._fall_back(err)
        self._memory.write(rows)
        self.done += int(rows.shape[0])

    def _fall_back(self, err: OSError) -> None:
        """Keep the rows written so far (read back from the file) and the rest in memory; say why."""
        self._memory = MemorySink(self.shape)
        if self.done:
            self._memory.write(_map(self._tmp, len(self._header), (self.done, *self.shape[1:])).clone())
        cause = getattr(err, "strerror", None) or str(err)
        self.warning = (
            f"The result was computed but not cached ({cause}: {self.path.parent}); it is kept for this "
            "session. Free disk space or make the cache folder writable to cache it."
        )
        self.close()

    def finish(self) -> torch.Tensor:
        """The whole result: memory-mapped from the finished entry (or held in memory after a failed write)."""
        if self.done != self.shape[0]:
            raise RuntimeError(f"{self.done} of {self.shape[0]} rows were written.")
        if self._memory is None:
            self.metadata["digest"] = self._digest.hexdigest()
            header = _header(self.shape, self.metadata)
            try:
                if len(header) != len(self._header):
                    raise OSError("the cache header changed length")
                self._handle.seek(0)
                _write_all(self._handle, memoryview(header))
                self._handle.close()
                os.chmod(self._tmp, FILE_MODE)
                result = _map(self._tmp, len(header), self.shape)  # the mapping outlives the rename
                os.replace(self._tmp, self.path)
                self._tmp = None
                return result
            except OSError as err:
                self._fall_back(err)  # every row is in the temporary file: read back before it goes
        return self._memory.finish()

    def close(self) -> None:
        """Close and remove the temporary file (a finished entry has been moved away already)."""
        if self._handle is not None and not self._handle.closed:
            self._handle.close()
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None


def load_streamed_entry(path: Path, expected: dict[str, str]) -> torch.Tensor | None:
    """The cached ``acts`` of ``path``, memory-mapped, if the entry is whole and matches
    ``expected``; else None (a truncated, altered or foreign file reads as a miss).

    The digest is checked over the mapped bytes. A file whose tensor is not a float32
    ``acts`` at a 4-byte aligned offset is read the ordinary way (``cache.load_entry``).
    """
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > path.stat().st_size:
                return None
            header = json.loads(handle.read(length))
        metadata = header.pop("__metadata__", None) or {}
        entry = header[NAME]
        shape, (begin, end) = tuple(int(n) for n in entry["shape"]), entry["data_offsets"]
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None
    if any(metadata.get(name) != value for name, value in expected.items()):
        return None
    start = 8 + length + int(begin)
    if set(header) != {NAME} or entry.get("dtype") != "F32" or start % _ITEM:
        tensors = load_entry(path, expected)
        return None if tensors is None else tensors.get(NAME)
    count = 1
    for extent in shape:
        count *= extent
    if int(end) - int(begin) != count * _ITEM or path.stat().st_size != start + count * _ITEM:
        return None
    try:
        tensor = _map(path, start, shape)
    except (RuntimeError, OSError):
        return None
    digest = hashlib.sha256(_prefix(shape))
    if count:
        digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    return tensor if metadata.get("digest") == digest.hexdigest() else None
