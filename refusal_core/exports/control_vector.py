"""llama.cpp control vectors (``--control-vector``): activation addition without touching weights.

The file is a GGUF with architecture ``controlvector``, the keys
``controlvector.model_hint`` and ``controlvector.layer_count``, and one 1-D float32 tensor
``direction.K`` per steered layer. llama.cpp adds ``direction.K`` (times the strength given
with ``--control-vector-scaled``) to the output of block ``K`` (0-based) at every position,
right after the block's residual add, and rejects ``K = 0``. Our activation addition at layer
``L`` adds to the *input* of block ``L``, which is the output of block ``L - 1``: so it is
written as ``direction.{L-1}``, and layers 0 and 1 cannot be expressed (refused with a
message). Each tensor holds ``coefficient * vector``, the raw direction as
``Intervention.from_direction_addition`` adds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from refusal_core.directions.base import DirectionSet
from refusal_core.directions.registry import setting
from refusal_core.errors import SettingsError
from refusal_core.exports import registry
from refusal_core.model.loading import LoadedModel

__all__ = ["ControlVectorSettings", "control_vectors", "gguf_index", "write_control_vector"]

FILE_NAME = "control-vector.gguf"


@dataclass(frozen=True)
class ControlVectorSettings:
    direction: str | None = setting(None, "the direction to add (default: the set's first)")
    layers: str | None = setting(
        None, "comma-separated layers whose input gets the vector (default: the layer the direction was read at)"
    )
    coefficient: float = setting(
        1.0, "multiplier of the raw direction stored in the file (llama.cpp's strength multiplies it again)"
    )


def gguf_index(layer: int) -> int:
    """The ``direction.K`` index llama.cpp applies where our actadd at input of ``layer`` adds."""
    return layer - 1


def _layers(loaded: LoadedModel, directions: DirectionSet, settings: ControlVectorSettings, name: str) -> list[int]:
    if settings.layers is None:
        layer = directions.select([name]).provenance[0].get("layer")
        if layer is None:
            raise SettingsError(f"Direction {name!r} records no layer; give the layers to steer (--layers 6,7).")
        layers = [int(layer)]
    else:
        try:
            layers = sorted({int(part) for part in str(settings.layers).split(",") if part.strip()})
        except ValueError:
            raise SettingsError(f"--layers must be comma-separated integers, got {settings.layers!r}.") from None
        if not layers:
            raise SettingsError("--layers names no layer; give e.g. --layers 6,7.")
    bad = [layer for layer in layers if not 2 <= layer < loaded.n_layers]
    if bad:
        raise SettingsError(
            f"Layer(s) {bad} cannot be a llama.cpp control vector: it adds after a block (direction.K, K >= 1), "
            f"so only the inputs of layers 2..{loaded.n_layers - 1} can be steered."
        )
    return layers


def control_vectors(
    loaded: LoadedModel, directions: DirectionSet, settings: ControlVectorSettings
) -> dict[int, np.ndarray]:
    """``{K: coefficient * vector}`` as float32, keyed by llama.cpp's ``direction.K`` index."""
    directions.check_width(loaded.d_model)
    name = settings.direction or directions.names[0]
    if name not in directions.names:
        raise SettingsError(f"No direction named {name!r}; the set has {', '.join(directions.names)}.")
    if not np.isfinite(settings.coefficient):
        raise SettingsError("--coefficient must be a finite number.")
    vector = directions.select([name]).vectors[0].detach().double().cpu().numpy() * float(settings.coefficient)
    return {gguf_index(layer): vector.astype(np.float32) for layer in _layers(loaded, directions, settings, name)}


def estimate_size(loaded: LoadedModel, directions: DirectionSet, settings: ControlVectorSettings) -> int:
    count = len(str(settings.layers).split(",")) if settings.layers else 1
    return count * (loaded.d_model * 4 + 128) + 16_384


def write_control_vector(request: registry.ExportRequest) -> Path:
    import gguf

    from refusal_core.exports.manifest import finish_export

    vectors = control_vectors(request.loaded, request.directions, request.settings)  # refuses before writing

    def fill(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp / FILE_NAME), "controlvector")
        writer.add_string("controlvector.model_hint", _model_hint(request.loaded))
        writer.add_uint32("controlvector.layer_count", len(vectors))
        for index, vector in sorted(vectors.items()):
            writer.add_tensor(f"direction.{index}", vector)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        request.directions.save(tmp / "directions")
        finish_export(tmp, request, "control_vector")

    return registry.staged_export(request.out_dir, request.overwrite, registry.export_version(), fill)


def _model_hint(loaded: LoadedModel) -> str:
    return str(getattr(loaded.model.config, "model_type", "llama"))


registry.register(
    registry.ExportFormat(
        name="control_vector",
        title="llama.cpp control vector",
        help="a llama.cpp --control-vector GGUF that adds a direction at chosen layers (activation addition, weights untouched)",
        settings=ControlVectorSettings,
        estimate_size=estimate_size,
        write=write_control_vector,
        suffix="control-vector",
    )
)
