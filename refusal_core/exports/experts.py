"""Per-expert checkpoint tensors behind a fused MoE parameter.

transformers 5 holds a Mixture-of-Experts layer's experts as one 3-D parameter
(``mlp.experts.down_proj``, ``[n_experts, d_model, d_ff]``), but many checkpoints, and
``save_pretrained`` itself, store one 2-D tensor per expert (``experts.3.down_proj.weight``
or Mixtral's ``block_sparse_moe.experts.3.w2.weight``) and stack them at load time.
transformers' own conversion table says which; this module reads it backwards for the
simple case, a plain stack along the expert axis, so that the streaming export can edit
each expert's tensor where it lies. Orthogonalizing the slices one by one is exactly
orthogonalizing the stack: the projection acts on the residual axis of each slice alone.
"""

from __future__ import annotations

__all__ = ["expert_keys"]

_REGEX_CHARS = set("()[]?*+\\^$|{}")


def _plain(text: str) -> bool:
    return not (_REGEX_CHARS & set(text))


def _conversions(model_type: str) -> list:
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping

    return list(get_checkpoint_conversion_mapping(model_type) or [])


def _stacks(conversions: list) -> list[tuple[str, str]]:
    """(per-expert source pattern, fused target) of each converter that only stacks along dim 0."""
    found = []
    for conversion in conversions:
        sources, targets = getattr(conversion, "source_patterns", None), getattr(conversion, "target_patterns", None)
        operations = getattr(conversion, "operations", None) or []
        if type(conversion).__name__ != "WeightConverter" or not sources or not targets:
            continue
        if len(sources) == 1 and len(targets) == 1 and len(operations) == 1:
            operation = operations[0]
            if type(operation).__name__ == "MergeModulelist" and getattr(operation, "dim", None) == 0:
                found.append((sources[0].lstrip("."), targets[0].lstrip(".")))
    return found


def _renamings(conversions: list) -> list[tuple[str, str]]:
    """(checkpoint text, model text) of each plain-string renaming."""
    pairs = []
    for conversion in conversions:
        if type(conversion).__name__ != "WeightRenaming":
            continue
        for source, target in zip(conversion.source_patterns, conversion.target_patterns):
            if _plain(source) and _plain(target):
                pairs.append((source, target))
    return pairs


def expert_keys(name: str, n_experts: int, model_type: str, keys: set[str] | dict) -> list[str] | None:
    """The checkpoint keys of the ``n_experts`` slices stacked into parameter ``name``, in expert
    order, when transformers' conversion table builds it by stacking them; else None."""
    conversions = _conversions(model_type)
    for source, target in _stacks(conversions):
        if "*" not in source or not ("." + name).endswith("." + target):
            continue
        prefix = name[: len(name) - len(target)]
        candidates = [prefix]
        for checkpoint_text, model_text in _renamings(conversions):
            if model_text in prefix:
                candidates.append(prefix.replace(model_text, checkpoint_text))
        for stem in candidates:
            found = [stem + source.replace("*", str(index)) for index in range(n_experts)]
            if all(key in keys for key in found):
                return found
    return None
