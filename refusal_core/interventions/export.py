"""Export a model with refusal directions orthogonalized out of its weights.

The result is a plain Hugging Face model directory (safetensors, untied embeddings, the
tokenizer), plus the directions themselves and a model card recording their provenance.
The live model is edited only inside ``orthogonalized_weights`` (under the model lock) and
is exactly as loaded afterwards, also when the export fails.
"""

from __future__ import annotations

import copy
import datetime
import importlib.metadata
import json
import shutil
from pathlib import Path

import torch
import transformers

from refusal_core.directions.base import DirectionSet
from refusal_core.interventions.export_target import (
    ExportError,
    check_target,
    default_export_dir,
    new_partial_dir,
    recover_leftovers,
    replace_dir,
    write_marker,
)
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.model.families import model_lock
from refusal_core.model.loading import LoadedModel

__all__ = ["ExportError", "default_export_dir", "export_orthogonalized", "model_card"]

_PROVENANCE_COLUMNS = ("model", "layer", "position", "method", "data_hash", "params")


def package_version() -> str:
    """The installed refusal-atlas version, else the one in the source tree's pyproject.toml."""
    try:
        return importlib.metadata.version("refusal-atlas")
    except importlib.metadata.PackageNotFoundError:
        pass
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:
        import tomllib

        return str(tomllib.loads(pyproject.read_text())["project"]["version"]) + " (source tree)"
    except (ImportError, OSError, KeyError, ValueError):
        return "unknown"


def _cell(value: object) -> str:
    """A Markdown table cell: JSON for structures, pipes and newlines escaped."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text.replace("|", "\\|").replace("\n", " ")


def _provenance_table(directions: DirectionSet) -> list[str]:
    header = ["name", *_PROVENANCE_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, record in zip(directions.names, directions.provenance):
        cells = [_cell(name), *(_cell(record.get(column, "")) for column in _PROVENANCE_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def model_card(loaded: LoadedModel, directions: DirectionSet, command: str, mode: str = "orthogonal") -> str:
    """The README.md of an exported model: YAML front matter, what was done, provenance."""
    names = ", ".join(f"`{name}`" for name in directions.names)
    lines = [
        "---",
        f"base_model: {json.dumps(loaded.spec)}",
        "library_name: transformers",
        "tags:",
        "- refusal-atlas",
        "- refusal-direction",
        "- orthogonalized",
        "- abliterated",
        "---",
        "",
        f"# {loaded.spec} with {len(directions)} refusal direction(s) orthogonalized out",
        "",
        f"Base model: `{loaded.spec}` (loaded from `{loaded.source}`).",
        "",
        "## What was done",
        "",
        "The span of the directions below was projected out of every weight matrix that writes "
        "to the residual stream: the embedding matrices, each layer's attention-out and MLP-out "
        "weights (every expert's, for mixture-of-experts layers), and their biases; where a norm "
        "follows a projection (Gemma's post-norms), against the norm-weighted directions, so the "
        "residual stream stays orthogonal to them (weight orthogonalization, Arditi et al. 2024, *Refusal in "
        "language models is mediated by a single direction*). Nothing written to the residual stream "
        "has a component along these directions any more, so the model computes the same function "
        "as directional ablation at every layer and position. The unembedding (lm_head) keeps the "
        "original matrix, so embeddings are saved untied (`tie_word_embeddings: false`).",
        *(
            [
                "",
                "Norm-preserving mode: after the projection, every edited column of the attention-out and "
                "MLP-out weights, every embedding row and every bias was rescaled to its original norm, so the "
                "model is no longer exactly the function of directional ablation.",
            ]
            if mode == "norm-preserving"
            else []
        ),
        "",
        f"Directions ({len(directions)}, width {directions.d_model}): {names}. They are saved beside "
        "the model as `directions.safetensors` and `directions.json`.",
        "",
        "## Direction provenance",
        "",
        *_provenance_table(directions),
        "",
        "## How it was made",
        "",
        f"- Command: `{command}`",
        f"- refusal-atlas {package_version()}, transformers {transformers.__version__}, torch {torch.__version__}",
        f"- Exported {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
        "",
        "## Caution",
        "",
        "Removing refusal directions removes a safety behaviour of the base model. Use this model "
        "for research on refusal mechanisms, not to serve harmful requests.",
        "",
    ]
    return "\n".join(lines)


def _save_model(loaded: LoadedModel, directions: DirectionSet, target: Path, mode: str = "orthogonal") -> None:
    """Save the orthogonalized model with an untied config, leaving the live model as it was.

    ``save_pretrained`` writes (and may update) ``model.config`` and ``generation_config``;
    it is given private copies, so the shared model's config is never touched.
    """
    model = loaded.model
    with model_lock(model), orthogonalized_weights(model, directions, mode=mode):
        config, generation_config = model.config, getattr(model, "generation_config", None)
        try:
            model.config = copy.deepcopy(config)
            model.config.tie_word_embeddings = False
            if generation_config is not None:
                model.generation_config = copy.deepcopy(generation_config)
            model.save_pretrained(target)
        finally:
            model.config = config
            if generation_config is not None:
                model.generation_config = generation_config


def export_orthogonalized(
    loaded: LoadedModel,
    directions: DirectionSet,
    out_dir: str | Path | None = None,
    overwrite: bool = False,
    command: str | None = None,
    mode: str = "orthogonal",
) -> Path:
    """Write ``loaded``'s model with ``directions`` orthogonalized out of its weights to ``out_dir``.

    ``out_dir`` defaults to ``cache/exports/<spec>-orthogonalized``. The folder holds a
    ``save_pretrained`` safetensors model (embedding and lm_head both saved,
    ``tie_word_embeddings`` False), the tokenizer, ``directions.safetensors`` and
    ``directions.json``, a README.md model card and the export marker. It is written to a
    temporary folder beside ``out_dir`` and moved into place (see ``export_target``), so
    ``out_dir`` is absent, the old export, or complete. A non-empty ``out_dir`` raises
    ExportError unless it holds an earlier export and ``overwrite`` is True. The residual
    self-check (``model/probe.py``) runs on the edited weights before anything is saved and
    raises ``ResidualLeakError`` naming the layer and module if a direction survives.
    ``mode`` is ``orthogonal`` or ``norm-preserving`` (see ``weights.orthogonalized_weights``).
    Returns ``out_dir``.
    """
    out_dir = Path(out_dir) if out_dir is not None else default_export_dir(loaded.spec)
    directions.check_width(loaded.d_model)
    recover_leftovers(out_dir)
    check_target(out_dir, overwrite)
    version = package_version()
    tmp = new_partial_dir(out_dir, version)
    try:
        _save_model(loaded, directions, tmp, mode)
        loaded.tokenizer.save_pretrained(tmp)
        directions.save(tmp / "directions")
        command = command or (
            f"export_orthogonalized({loaded.spec!r}, <{len(directions)} directions>, {str(out_dir)!r})"
        )
        (tmp / "README.md").write_text(model_card(loaded, directions, command, mode))
        write_marker(tmp, complete=True, version=version)  # last: only a whole export is marked complete
        check_target(out_dir, overwrite)  # Another export may have filled it meanwhile.
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
