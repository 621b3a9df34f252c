"""What the dashboard computes in one session, and the UI-free helpers that compute it.

A :class:`Workspace` holds one session's results for one model: activations, named
direction sets, SOM, clusters, selection and search results, and generated completions,
so every dashboard page sees what the others computed. It lives in the session (never in
a shared cache) and never holds anything that other sessions use.

The helpers here turn activations into named direction sets, measure how well each layer
separates harmful from harmless prompts, build interventions, and pack direction sets
into downloadable archives and back. Nothing here imports Streamlit.

Test hook: with ``REFUSAL_ATLAS_TEST_MODEL=tiny`` in the environment,
:func:`load_model_for_app` returns the tiny random Llama of ``tests/tiny.py`` for the
bundled specs, so the dashboard can be driven headless in seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from refusal_core.activations import Activations
from refusal_core.directions import DirectionError, DirectionSet, dim_from_activations, load_direction_set
from refusal_core.models import BUNDLED_ORGANISM, LoadedModel, bundled_model_dir, load_model
from refusal_core.paths import cache_dir

__all__ = [
    "TEST_MODEL_ENV",
    "LayerSeparation",
    "Workspace",
    "build_dim_set",
    "cache_usage",
    "clear_activation_cache",
    "data_hash",
    "device_choices",
    "direction_sets_zip",
    "human_bytes",
    "layer_points",
    "layer_separation",
    "load_model_for_app",
    "model_key",
    "organism_built",
    "read_direction_uploads",
    "refusal_rate",
    "sample_prompts",
    "stacked_unit_pt",
]

TEST_MODEL_ENV = "REFUSAL_ATLAS_TEST_MODEL"
# Uploaded archives are read in memory; anything larger is not a direction set.
MAX_UPLOAD_BYTES = 512 * 1024 * 1024


# ----------------------------------------------------------------------------- models


def device_choices() -> list[str]:
    """Devices the sidebar offers: cpu always, cuda and ``auto`` (spread over GPUs) with a GPU."""
    return ["cpu", "cuda", "auto"] if torch.cuda.is_available() else ["cpu"]


def model_key(spec: str, device: str, dtype: str) -> str:
    """The identity of a loaded model in the app; a workspace belongs to one key."""
    return f"{spec}|{device}|{dtype}"


def load_model_for_app(spec: str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """:func:`load_model` with the app's device choices (``auto`` = ``device_map="auto"``).

    With ``REFUSAL_ATLAS_TEST_MODEL=tiny`` the bundled specs load the tiny random Llama of
    ``tests/tiny.py`` instead (imported lazily; it exists only in a source checkout); other
    specs still load for real, so load failures can be tested too.
    """
    if os.environ.get(TEST_MODEL_ENV) == "tiny" and spec.startswith("bundled:"):
        from tests.tiny import tiny_model

        return tiny_model("llama")
    if device == "auto":
        return load_model(spec, dtype=dtype, device_map="auto")
    return load_model(spec, device=device, dtype=dtype)


def organism_built() -> bool:
    """Whether ``bundled:refusal-organism`` exists on disk (or the test hook replaces models)."""
    if os.environ.get(TEST_MODEL_ENV) == "tiny":
        return True
    return (bundled_model_dir(BUNDLED_ORGANISM.split(":", 1)[1]) / "config.json").is_file()


# ----------------------------------------------------------------------------- cache


def cache_usage() -> dict[str, int]:
    """Bytes used by each subfolder of the cache root (``activations``, ``models``, ...)."""
    root = cache_dir()
    if not root.is_dir():
        return {}
    usage = {}
    for child in sorted(root.iterdir()):
        if child.is_dir():
            usage[child.name] = sum(f.stat().st_size for f in child.rglob("*") if f.is_file())
    return usage


def clear_activation_cache() -> int:
    """Delete the on-disk activation cache; returns the number of files removed.

    Only derived data lives there (content-keyed), so the next extraction recomputes it.
    Results already in a session are not affected.
    """
    folder = cache_dir() / "activations"
    if not folder.is_dir():
        return 0
    count = sum(1 for f in folder.rglob("*") if f.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    return count


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover


# ----------------------------------------------------------------------------- prompts


def sample_prompts(prompts, max_prompts: int):
    """At most ``max_prompts`` of a PromptSet, taken round-robin over its categories.

    Built-in files are sorted by category, so the first ``n`` would cover only a few
    categories; round-robin keeps every category represented. The kept items stay in file
    order, and the choice is deterministic.
    """
    if max_prompts < 1:
        raise ValueError(f"max_prompts must be at least 1, got {max_prompts}.")
    if len(prompts) <= max_prompts:
        return prompts
    by_category: dict[Any, list[int]] = OrderedDict()
    for index, category in enumerate(prompts.categories):
        by_category.setdefault(category, []).append(index)
    queues = [list(reversed(indices)) for indices in by_category.values()]
    chosen: list[int] = []
    while len(chosen) < max_prompts:
        for queue in queues:
            if queue and len(chosen) < max_prompts:
                chosen.append(queue.pop())
    return prompts.subset(sorted(chosen), name=f"{prompts.name}[{max_prompts}]")


def data_hash(*prompt_sets) -> str:
    """A short hash of the prompt sets' contents, for provenance records."""
    digest = hashlib.sha256()
    for prompts in prompt_sets:
        digest.update(prompts.content_hash().encode())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- directions from activations


def build_dim_set(harmful: Activations, harmless: Activations, model: str, hash_of_data: str) -> DirectionSet:
    """Every (position, layer) difference-in-means candidate, ``dim/pos{p}/layer{l}``.

    Layers are the block inputs ``0..n_layers-1`` (the residual stream entering each
    block, as in Arditi et al.); the final block output is not a candidate. Cells whose
    difference vanishes are left out and listed in ``meta["dropped"]``: at layer 0 a
    template token's residual is its embedding, identical for every prompt.
    """
    provenance = {
        "model": model,
        "data_hash": hash_of_data,
        "params": {"n_harmful": int(harmful.acts.shape[0]), "n_harmless": int(harmless.acts.shape[0])},
    }
    return dim_from_activations(harmful, harmless, provenance)


def layer_points(
    harmful: Activations, harmless: Activations, layer: int, position: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``([n_harmful, d], [n_harmless, d])`` block inputs of ``layer`` at ``position``."""
    return harmful.block_input(layer, position), harmless.block_input(layer, position)


@dataclass(frozen=True)
class LayerSeparation:
    """How well each layer separates harmful from harmless prompts at one position.

    ``dim_norm[l]``: norm of the difference in means; ``probe_accuracy[l]``: mean
    cross-validated accuracy of a logistic-regression probe (NaN with too few prompts);
    ``silhouette[l]``: silhouette of the two sets (Euclidean, -1..1; higher = more apart).
    """

    position: int
    layers: tuple[int, ...]
    dim_norm: np.ndarray
    probe_accuracy: np.ndarray
    silhouette: np.ndarray
    folds: int


def _probe_accuracy(points: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if folds < 2:
        return float("nan")
    # The probe standardises features: unlike the plots, it should not be dominated by the
    # few dimensions with very large activations.
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, points, labels, cv=splitter).mean())


def layer_separation(
    harmful: Activations,
    harmless: Activations,
    position: int = -1,
    probe: bool = True,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> LayerSeparation:
    """DIM norm, probe accuracy (NaN with ``probe=False``) and silhouette, for every block input.

    The probe dominates the cost (one cross-validated fit per layer); ``progress(done,
    total)`` is called after each layer.
    """
    from sklearn.metrics import silhouette_score

    n_layers = harmful.n_layers
    labels = np.array([1] * harmful.acts.shape[0] + [0] * harmless.acts.shape[0])
    folds = int(min(5, harmful.acts.shape[0], harmless.acts.shape[0])) if probe else 0
    norms, accuracies, silhouettes = [], [], []
    for layer in range(n_layers):
        bad, good = layer_points(harmful, harmless, layer, position)
        points = torch.cat([bad, good]).double().numpy()
        norms.append(float((bad.double().mean(0) - good.double().mean(0)).norm()))
        accuracies.append(_probe_accuracy(points, labels, folds, seed))
        silhouettes.append(float(silhouette_score(points, labels)) if len(points) > 2 else float("nan"))
        if progress:
            progress(layer + 1, n_layers)
    return LayerSeparation(
        position=position,
        layers=tuple(range(n_layers)),
        dim_norm=np.array(norms),
        probe_accuracy=np.array(accuracies),
        silhouette=np.array(silhouettes),
        folds=folds,
    )


# ----------------------------------------------------------------------------- generation helpers


def refusal_rate(completions: Sequence, judge: Callable[[str], bool]) -> float:
    """Share of completions whose text ``judge`` flags as a refusal (NaN for none)."""
    if not completions:
        return float("nan")
    return sum(bool(judge(c.text)) for c in completions) / len(completions)


def tensor_key(*parts: Any) -> str:
    """A content hash of strings, numbers, lists and tensors (tensors by their bytes)."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            tensor = part.detach().float().contiguous().cpu()
            digest.update(f"{tuple(tensor.shape)}".encode())
            digest.update(tensor.numpy().tobytes())
        else:
            digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x1f")
    return digest.hexdigest()[:32]


# ----------------------------------------------------------------------------- export / import


def _safe_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name).strip("._")
    return cleaned or "directions"


def direction_sets_zip(sets: Mapping[str, DirectionSet]) -> bytes:
    """A zip holding ``<name>.safetensors`` + ``<name>.json`` for each named set."""
    if not sets:
        raise DirectionError("Choose at least one direction set to export.")
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        used: set[str] = set()
        for name, directions in sets.items():
            stem = _safe_name(name)
            while stem in used:
                stem += "_"
            used.add(stem)
            tensors_path, json_path = directions.save(Path(tmp) / stem)
            archive.write(tensors_path, tensors_path.name)
            archive.write(json_path, json_path.name)
    return buffer.getvalue()


def stacked_unit_pt(sets: Mapping[str, DirectionSet]) -> bytes:
    """``torch.save`` bytes of every chosen direction as unit vectors, stacked ``[k, d]`` float32.

    For the original refusal_direction scripts, which load a plain tensor; names and
    provenance are only in the zip export.
    """
    if not sets:
        raise DirectionError("Choose at least one direction set to export.")
    widths = {directions.d_model for directions in sets.values()}
    if len(widths) > 1:
        raise DirectionError(f"The chosen sets have different widths {sorted(widths)}; export sets of one model.")
    buffer = io.BytesIO()
    torch.save(torch.cat([directions.unit().float() for directions in sets.values()]).contiguous(), buffer)
    return buffer.getvalue()


def _load_pt(name: str, data: bytes) -> DirectionSet:
    """A ``.pt`` holding one tensor ``[d]`` or ``[k, d]``; loaded with ``weights_only=True``.

    Never unpickles arbitrary objects: ``weights_only`` refuses anything but tensors and
    plain containers.
    """
    try:
        loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means "not a tensor file"
        raise DirectionError(f"{name} is not a tensor file that can be loaded safely ({err}).") from err
    if isinstance(loaded, dict) and len(loaded) == 1:
        loaded = next(iter(loaded.values()))
    if not isinstance(loaded, torch.Tensor) or loaded.dim() not in (1, 2):
        raise DirectionError(f"{name} must hold one tensor of shape [d] or [k, d].")
    vectors = (loaded[None] if loaded.dim() == 1 else loaded).float()
    stem = Path(name).stem
    record = {"method": "imported-pt", "source": name}
    return DirectionSet(
        vectors=vectors,
        names=tuple(f"{stem}/{i}" for i in range(vectors.shape[0])),
        provenance=tuple(dict(record) for _ in range(vectors.shape[0])),
        meta=dict(record),
    )


def _expand_zips(files: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Uploaded files with every .zip replaced by its .safetensors/.json/.pt members."""
    out: list[tuple[str, bytes]] = []
    for name, data in files:
        if not name.lower().endswith(".zip"):
            out.append((name, data))
            continue
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [m for m in archive.infolist() if not m.is_dir()]
                if sum(m.file_size for m in members) > MAX_UPLOAD_BYTES:
                    raise DirectionError(
                        f"{name} unpacks to more than {human_bytes(MAX_UPLOAD_BYTES)}; it is not a direction export."
                    )
                for member in members:
                    # Only the base name is used, so paths inside the archive cannot escape.
                    base = Path(member.filename).name
                    if base.lower().endswith((".safetensors", ".json", ".pt")):
                        out.append((base, archive.read(member)))
        except zipfile.BadZipFile as err:
            raise DirectionError(f"{name} is not a valid zip archive ({err}).") from err
    return out


def read_direction_uploads(files: Sequence[tuple[str, bytes]], d_model: int) -> dict[str, DirectionSet]:
    """Direction sets from uploaded files, each validated against the model width.

    Accepts pairs ``<stem>.safetensors`` + ``<stem>.json`` (as written by
    ``DirectionSet.save``), zips of such pairs (the dashboard's export) and ``.pt`` tensor
    files. Returns ``{stem: DirectionSet}``; raises DirectionError naming the fix.
    """
    files = _expand_zips(files)
    if not files:
        raise DirectionError("No files given; upload a .safetensors file with its .json, a zip export, or a .pt file.")
    by_stem: dict[str, dict[str, bytes]] = {}
    sets: dict[str, DirectionSet] = {}
    for name, data in files:
        suffix = Path(name).suffix.lower()
        if suffix == ".pt":
            directions = _load_pt(name, data)
            directions.check_width(d_model)
            sets[Path(name).stem] = directions
        elif suffix in (".safetensors", ".json"):
            by_stem.setdefault(Path(name).stem, {})[suffix] = data
        else:
            raise DirectionError(f"{name}: unsupported file type; upload .safetensors + .json, .zip or .pt.")
    for stem, parts in by_stem.items():
        missing = {".safetensors", ".json"} - set(parts)
        if missing:
            raise DirectionError(
                f"{stem}: the {' and '.join(sorted(missing))} file is missing; upload both files of the pair."
            )
        with tempfile.TemporaryDirectory() as tmp:
            for suffix, data in parts.items():
                (Path(tmp) / f"direction{suffix}").write_bytes(data)
            sets[stem] = load_direction_set(Path(tmp) / "direction", d_model=d_model)
    return sets


# ----------------------------------------------------------------------------- the workspace


@dataclass
class Workspace:
    """One session's computed state for one model (see the module docstring).

    ``harmful``/``harmless`` are the PromptSets the activations were computed from;
    ``direction_sets`` maps a display name to a DirectionSet; the other fields hold the
    latest result of each page, or None.
    """

    key: str
    harmful: Any = None
    harmless: Any = None
    harmful_acts: Activations | None = None
    harmless_acts: Activations | None = None
    separation: LayerSeparation | None = None
    direction_sets: dict[str, DirectionSet] = field(default_factory=dict)
    som: dict | None = None
    per_prompt: dict | None = None
    clusters: dict | None = None
    selection: Any = None
    search: Any = None
    optimized: Any = None  # the last optimize.OptimizedDirection
    generations: OrderedDict = field(default_factory=OrderedDict)
    memo: OrderedDict = field(default_factory=OrderedDict)
    max_memo: int = 6

    @property
    def has_activations(self) -> bool:
        return self.harmful_acts is not None and self.harmless_acts is not None

    def set_activations(self, harmful, harmless, harmful_acts: Activations, harmless_acts: Activations) -> None:
        """New activations: results derived from the old ones are dropped, direction sets kept."""
        self.harmful, self.harmless = harmful, harmless
        self.harmful_acts, self.harmless_acts = harmful_acts, harmless_acts
        self.separation = None
        self.som = self.per_prompt = self.clusters = None
        self.memo.clear()

    def add_set(self, name: str, directions: DirectionSet) -> None:
        """Store (or replace) a named direction set."""
        self.direction_sets[name] = directions

    def combined(self, names: Sequence[str]) -> DirectionSet:
        """The chosen sets as one set, direction names prefixed with ``<set>:``."""
        chosen = [self.direction_sets[name] for name in names]
        return DirectionSet.concat(chosen, prefixes=[f"{name}:" for name in names])

    def remember(self, key: str, compute: Callable[[], Any]) -> Any:
        """A small per-session memo (least recently used out), for projections and the like."""
        if key in self.memo:
            self.memo.move_to_end(key)
            return self.memo[key]
        value = compute()
        self.memo[key] = value
        while len(self.memo) > self.max_memo:
            self.memo.popitem(last=False)
        return value

    def store_generation(self, key: str, result: Any, max_entries: int = 8) -> None:
        self.generations[key] = result
        self.generations.move_to_end(key)
        while len(self.generations) > max_entries:
            self.generations.popitem(last=False)
