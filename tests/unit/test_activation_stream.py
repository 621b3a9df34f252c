"""Activations streamed into the cache batch by batch: the file reads back equal with the
safetensors library, a crash or a damaged file is never read as valid, a failed write
loses nothing, and the writer holds one batch, not the result (peak RSS, own process)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import refusal_core.activations.extract as extract
import refusal_core.activations.stream as stream
from refusal_core.activations.cache import entry_path
from refusal_core.activations.extract import extract_activations
from refusal_core.activations.stream import load_streamed_entry

PROMPTS = [f"Prompt number {i} about bread and the sea" for i in range(7)]


def test_streamed_file_reads_back_equal_with_the_safetensors_library(tiny_llama):
    acts = extract_activations(tiny_llama, PROMPTS, batch_size=2, layers=[0, 2])
    path = entry_path("activations", acts.key)
    stored = load_file(str(path))["acts"]
    plain = extract_activations(tiny_llama, PROMPTS, batch_size=7, layers=[0, 2], use_cache=False)
    assert torch.equal(stored, acts.acts) and torch.allclose(stored, plain.acts, atol=1e-5)
    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    assert header["key"] == acts.key and header["layers"] == "[0, 2]"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    again = extract_activations(tiny_llama, PROMPTS, batch_size=2, layers=[0, 2])
    assert again.from_cache and torch.equal(again.acts, acts.acts)


def test_a_crash_mid_extraction_leaves_no_entry_and_no_temporary_file(tiny_llama, monkeypatch):
    real, calls = extract._forward_batch, []

    def dies_on_the_third_batch(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(extract, "_forward_batch", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_activations(tiny_llama, PROMPTS, batch_size=2)
    folder = entry_path("activations", "x").parent
    assert not list(folder.iterdir())


@pytest.mark.parametrize("damage", ["half", "short_by_one_row", "flip_data", "flip_header", "empty"])
def test_a_damaged_entry_is_not_read_as_valid(tiny_llama, damage):
    acts = extract_activations(tiny_llama, PROMPTS, batch_size=3)
    path = entry_path("activations", acts.key)
    data = bytearray(path.read_bytes())
    row = acts.acts[0].numel() * 4
    data = {
        "half": data[: len(data) // 2],
        "short_by_one_row": data[:-row],
        "flip_data": data[:-9] + bytes([data[-9] ^ 0x01]) + data[-8:],
        "flip_header": data[:40] + bytes([data[40] ^ 0x20]) + data[41:],
        "empty": b"",
    }[damage]
    damaged = path.with_name("damaged.tmp")
    damaged.write_bytes(bytes(data))
    os.replace(damaged, path)  # the cache never rewrites in place: the first result maps the old file
    assert load_streamed_entry(path, {"key": acts.key}) is None
    again = extract_activations(tiny_llama, PROMPTS, batch_size=3)
    assert not again.from_cache and torch.equal(again.acts, acts.acts)


def test_a_failed_write_keeps_every_row_and_warns(tiny_llama, monkeypatch):
    expected = extract_activations(tiny_llama, PROMPTS, batch_size=2, use_cache=False).acts
    real, calls = stream._write_all, []

    def disk_fills(handle, data):
        calls.append(1)
        if len(calls) == 3:  # the header, two batches, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle, data)

    monkeypatch.setattr(stream, "_write_all", disk_fills)
    acts = extract_activations(tiny_llama, PROMPTS, batch_size=2)
    assert torch.equal(acts.acts, expected)
    assert "No space left on device" in acts.cache_warning
    assert not list(entry_path("activations", acts.key).parent.iterdir())


_PEAK_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from refusal_core.activations.stream import MemorySink, StreamSink

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024

    batches, rows, width = 24, 64, 16384  # 4 MiB a batch, 96 MiB in all
    shape = (batches * rows, 1, 1, width)
    batch = torch.randn(rows, 1, 1, width)
    batch += 0  # every page of the one batch touched before the baseline
    before = hwm()
    sink = StreamSink(sys.argv[2], shape, {"key": "k"}) if sys.argv[1] == "stream" else MemorySink(shape)
    for index in range(batches):
        batch.fill_(index)
        sink.write(batch)
    result = sink.finish()
    sink.close()
    assert result.shape == shape
    print(hwm() - before, batch.numel() * 4, result.numel() * 4)
    """
)


def _peak(kind: str, tmp_path) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, kind, str(tmp_path / f"{kind}.safetensors")],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    ).stdout
    growth, batch, total = (int(n) for n in out.split())
    return growth, batch, total


def test_the_streaming_writer_holds_one_batch_not_the_result(tmp_path):
    growth, batch, total = _peak("stream", tmp_path)
    held, _, _ = _peak("memory", tmp_path)
    assert held >= 0.9 * total  # the in-memory result: the whole tensor is resident
    assert growth <= 2 * batch  # streamed: at most about a batch more than before the first write
    written = load_file(str(tmp_path / "stream.safetensors"))["acts"]
    assert written.shape[0] == total // batch * 64 and float(written[-1].max()) == 23.0
