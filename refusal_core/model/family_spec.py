"""What a model family is: where one architecture keeps the modules that read from and
write to the residual stream (the data the family table in ``family_table.py`` is made of).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Family", "Writer", "ModelWrite"]


@dataclass(frozen=True)
class Writer:
    """One module of a decoder layer whose weights write into the residual stream.

    ``path`` is relative to the layer and names an ``nn.Linear``, a transformers ``Conv1D``
    or a fused-experts module (3-D ``down_proj`` ``[experts, ., .]``, optional
    ``down_proj_bias`` ``[experts, d]``). ``norm`` names the elementwise norm between this
    module and the residual add (Gemma, OLMo 2, GLM-4 post-norms) and ``norm_offset`` what
    that norm adds to its weight (Gemma multiplies by ``1 + w``). ``transposed`` says how a
    fused-experts tensor is laid out (``[E, inter, d]`` if True, ``[E, d, inter]`` if False)
    where the module does not say so itself (transformers sets ``is_transposed``).
    ``optional`` writers may be absent from some layers (dense layers of an MoE model,
    a shared expert that only some configs have); each layer must have at least one
    writer of every ``group``.
    """

    path: str
    group: str = "attn"
    norm: str | None = None
    norm_offset: float = 0.0
    optional: bool = False
    transposed: bool | None = None


@dataclass(frozen=True)
class ModelWrite:
    """A parameter outside the decoder layers that writes into the residual stream
    (a multimodal projector), by dotted name relative to the causal-LM model, and the axis
    of that tensor that indexes the residual stream."""

    name: str
    axis: int


@dataclass(frozen=True)
class Family:
    """Where one architecture keeps the modules that read from and write to the residual stream.

    Paths are dotted attribute paths. ``layers``, ``embeddings``, ``final_norm`` and
    ``lm_head`` are relative to the causal-LM model; ``attn_write`` and ``mlp_write`` are
    relative to one decoder layer and name the module whose output is added to the residual
    stream (the ablation hooks project its output). ``writers`` lists the modules whose
    weights the weight edits change; empty means ``attn_write`` and ``mlp_write`` themselves.
    ``model_writes`` are parameters outside the layers that also write (multimodal
    projectors). ``weights_orthogonalizable`` stays for callers that register their own
    family whose writes cannot be edited exactly; every family in the table can be.
    """

    layers: str
    embeddings: tuple[str, ...]
    attn_write: str
    mlp_write: str
    final_norm: str
    lm_head: str = "lm_head"
    weights_orthogonalizable: bool = True
    writers: tuple[Writer, ...] = ()
    model_writes: tuple[ModelWrite, ...] = ()
