"""The model shape the benchmarks build with random weights: TinyLlama-1.1B's layout (the
size a researcher's laptop model has), its special tokens those of the tiny tokenizer
that the benchmarks pair it with (``refusal_core.model.tiny``). A benchmark that needs
another size overrides fields of a copy."""

from __future__ import annotations

from refusal_core.model.tiny import SPECIAL_TOKEN_IDS

__all__ = ["TINYLLAMA"]

TINYLLAMA = dict(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=22,
    num_attention_heads=32,
    num_key_value_heads=4,
    vocab_size=32000,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
    **SPECIAL_TOKEN_IDS,
)
