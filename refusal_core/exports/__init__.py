"""Export formats: one registry (``exports.registry``) of the ways a set of refusal directions
leaves the toolkit (a full model folder, streamed shard by shard from the model's files by
``exports.folder``; a PEFT LoRA adapter; an abliterated GGUF; llama.cpp control vectors), each
with a ``manifest.json`` that ``reproduce`` can rerun."""
