"""Reading and writing safetensors files one tensor at a time, without memory-mapping them.

A safetensors file is an 8-byte little-endian header length, a JSON header naming each
tensor's dtype, shape and byte range, then the raw bytes. Reading a tensor here is a
``seek`` and a ``readinto`` into a fresh tensor, so the process holds that tensor and
nothing else of the file (a memory map would count every page touched as resident);
writing copies the header and streams each tensor's bytes in order, so an output shard is
never held in memory whole.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import torch

__all__ = ["DTYPES", "Entry", "ShardHeader", "ShardWriter", "iter_bytes", "iter_rows", "read_header", "read_tensor"]

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_COPY_CHUNK = 64 << 20


@dataclass(frozen=True)
class Entry:
    """One tensor of a file: its name, safetensors dtype code, shape and byte range in the data."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype not in DTYPES:
            raise ValueError(f"Tensor {self.name} has dtype {self.dtype}, which this export cannot read.")
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class ShardHeader:
    """The parsed header of one safetensors file; ``entries`` in the order of their bytes."""

    path: Path
    data_start: int
    entries: tuple[Entry, ...]
    metadata: dict | None

    def entry(self, name: str) -> Entry:
        return next(entry for entry in self.entries if entry.name == name)


def read_header(path: Path) -> ShardHeader:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    metadata = header.pop("__metadata__", None)
    entries = [
        Entry(name, spec["dtype"], tuple(spec["shape"]), int(spec["data_offsets"][0]), int(spec["data_offsets"][1]))
        for name, spec in header.items()
    ]
    return ShardHeader(Path(path), 8 + length, tuple(sorted(entries, key=lambda e: e.begin)), metadata)


def read_tensor(header: ShardHeader, entry: Entry) -> torch.Tensor:
    """The tensor ``entry`` of ``header``'s file, read into its own memory (no map)."""
    tensor = torch.empty(entry.shape, dtype=entry.torch_dtype)
    if entry.nbytes != tensor.numel() * tensor.element_size():
        raise ValueError(
            f"{header.path}: tensor {entry.name} holds {entry.nbytes} bytes, not the {entry.shape} it declares."
        )
    if entry.nbytes:
        view = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
        with open(header.path, "rb") as handle:
            handle.seek(header.data_start + entry.begin)
            if handle.readinto(view) != entry.nbytes:
                raise ValueError(f"{header.path} ends inside tensor {entry.name}; the file is truncated.")
    return tensor


def iter_bytes(header: ShardHeader, entry: Entry, chunk: int = _COPY_CHUNK, skip: int = 0) -> Iterator[memoryview]:
    """The raw bytes of ``entry`` after its first ``skip``, in pieces of at most ``chunk``
    bytes; each piece is a view of one reused buffer, valid until the next is asked for."""
    buffer = bytearray(min(chunk, max(entry.nbytes - skip, 1)))
    with open(header.path, "rb") as source:
        source.seek(header.data_start + entry.begin + skip)
        left = entry.nbytes - skip
        while left:
            count = source.readinto(memoryview(buffer)[: min(left, len(buffer))])
            if not count:
                raise ValueError(f"{header.path} ends inside tensor {entry.name}; the file is truncated.")
            yield memoryview(buffer)[:count]
            left -= count


def iter_rows(header: ShardHeader, entry: Entry, rows: int) -> Iterator[torch.Tensor]:
    """``entry`` as consecutive slices of ``rows`` rows along its first axis, each read on its own."""
    row_bytes = entry.nbytes // max(entry.shape[0], 1)
    with open(header.path, "rb") as source:
        source.seek(header.data_start + entry.begin)
        for start in range(0, entry.shape[0], rows):
            piece = torch.empty((min(rows, entry.shape[0] - start), *entry.shape[1:]), dtype=entry.torch_dtype)
            want = piece.numel() * piece.element_size()
            if want != row_bytes * piece.shape[0] or (
                want and source.readinto(memoryview(piece.reshape(-1).view(torch.uint8).numpy())) != want
            ):
                raise ValueError(f"{header.path} ends inside tensor {entry.name}; the file is truncated.")
            yield piece


class ShardWriter:
    """Writes one safetensors file tensor by tensor, in the order the header was declared.

    ``entries`` fixes every name, dtype and shape up front (the header is written first);
    :meth:`write` must then supply each tensor's bytes, in order, as pieces (tensors or
    bytes) whose sizes add up to the declared size. :meth:`close` checks that all came.
    """

    def __init__(self, path: Path, entries: list[tuple[str, str, tuple[int, ...]]], metadata: dict | None) -> None:
        header: dict = {"__metadata__": metadata} if metadata else {}
        offset, self._sizes = 0, []
        for name, dtype, shape in entries:
            size = math.prod(shape) * torch.empty((), dtype=DTYPES[dtype]).element_size()
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._sizes.append((name, size))
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
        self._handle: BinaryIO = open(path, "wb")
        self._handle.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0

    def _start(self, name: str) -> int:
        want, size = self._sizes[self._next]
        if want != name:
            raise RuntimeError(f"Shard writer expected tensor {want} next, got {name}.")
        return size

    def write(self, name: str, pieces: Iterable[torch.Tensor | bytes]) -> None:
        size, written = self._start(name), 0
        for piece in pieces:
            data = (
                memoryview(piece.contiguous().reshape(-1).view(torch.uint8).numpy())
                if isinstance(piece, torch.Tensor)
                else piece
            )
            written += len(data)
            self._handle.write(data)
        if written != size:
            raise RuntimeError(f"Tensor {name} should take {size} bytes, {written} were written.")
        self._next += 1

    def copy(self, name: str, header: ShardHeader, entry: Entry) -> None:
        """``entry``'s bytes copied unchanged from its file, by the kernel where it can
        (``copy_file_range``: no pass through this process's memory), else in chunks."""
        if self._start(name) != entry.nbytes:
            raise RuntimeError(
                f"Tensor {name} should take {self._sizes[self._next][1]} bytes, its source holds {entry.nbytes}."
            )
        self._handle.flush()
        left, offset = entry.nbytes, header.data_start + entry.begin
        try:
            with open(header.path, "rb") as source:
                while left:
                    moved = os.copy_file_range(source.fileno(), self._handle.fileno(), left, offset)
                    if moved <= 0:
                        raise OSError("copy_file_range copied nothing")
                    left, offset = left - moved, offset + moved
        except (OSError, AttributeError):
            done = entry.nbytes - left
            self._handle.seek(0, os.SEEK_END)
            for piece in iter_bytes(header, entry, skip=done):
                self._handle.write(piece)
        self._next += 1

    def close(self) -> None:
        try:
            if self._next != len(self._sizes):
                raise RuntimeError(f"Shard writer closed after {self._next} of {len(self._sizes)} tensors.")
        finally:
            self._handle.close()
