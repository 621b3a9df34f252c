"""Where a model's weight files are: a local folder, the hub cache, or a bundled model's
converted folder, and which safetensors shard holds each tensor.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from refusal_core.errors import UserError

__all__ = ["ModelFiles", "WeightFilesError", "files_for_spec", "find_model_files", "model_files"]

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class WeightFilesError(UserError, ValueError):
    """The model's weight files are missing, damaged or laid out in a way the export cannot read."""


@dataclass(frozen=True)
class ModelFiles:
    """A model folder and its safetensors shards: ``weight_map`` maps tensor name to shard file name."""

    folder: Path
    shards: tuple[str, ...]
    weight_map: dict[str, str]
    indexed: bool

    @property
    def index_metadata(self) -> dict:
        if not self.indexed:
            return {}
        return dict(json.loads((self.folder / INDEX).read_text()).get("metadata") or {})


def _hub_snapshot(repo_id: str) -> Path | None:
    """The hub cache's snapshot folder of ``repo_id``, without any network access."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached, not a repo id, no hub client: the caller falls back
        return None


def model_files(folder: Path) -> ModelFiles | None:
    """The shards of the model in ``folder``: from its index, else its single file, else None."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        try:
            weight_map = dict(json.loads((folder / INDEX).read_text())["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise WeightFilesError(
                f"{folder / INDEX} is not a readable shard index ({err}); re-save or re-download the model."
            ) from err
        shards = tuple(dict.fromkeys(weight_map.values()))
        missing = [name for name in shards if not (folder / name).is_file()]
        if missing:
            raise WeightFilesError(
                f"{folder} lacks the shard(s) {', '.join(missing)} its index names; download them again."
            )
        return ModelFiles(folder, shards, weight_map, indexed=True)
    if (folder / SINGLE).is_file():
        from refusal_core.exports.safetensors_io import read_header

        names = [entry.name for entry in read_header(folder / SINGLE).entries]
        return ModelFiles(folder, (SINGLE,), {name: SINGLE for name in names}, indexed=False)
    return None


def find_model_files(source: str) -> ModelFiles | None:
    """The safetensors files behind a loaded model's ``source`` (a folder or a hub id), if any.

    None where there are none to read (a random tiny model, a model stored only as
    ``.bin`` or GGUF, a hub id not in the local cache): then only the in-memory export works.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return model_files(path)
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        snapshot = _hub_snapshot(source)
        if snapshot is not None:
            return model_files(snapshot)
    return None


def files_for_spec(spec: str) -> ModelFiles | None:
    """The safetensors files a model spec would load (bundled, local folder, cached hub id), else None."""
    from refusal_core.model.loading import model_source

    source = model_source(spec)
    return None if source is None else find_model_files(source)
