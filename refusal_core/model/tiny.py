"""Tiny seeded random models with a self-made tokenizer: no download, seconds to build.

``load_model("tiny:llama")`` (or any family in ``FAMILY_CONFIGS``) gives one. The fast
tests run on them, and the dashboard's tests load one for the bundled specs (see
``tests/app_hooks.py``), so it can be driven headless.
"""

from __future__ import annotations

import functools

import torch

from refusal_core.model.loaded import LoadedModel

__all__ = ["FAMILY_CONFIGS", "SPECIAL_TOKEN_IDS", "TINY_PREFIX", "tiny_model", "tiny_tokenizer"]

# The spec prefix that loads one: ``tiny:llama``.
TINY_PREFIX = "tiny:"

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
# The tokenizer gives the special tokens the first ids, in this order; every config built
# for it (here, in tiny_families.py and in the benchmarks) names them so.
SPECIAL_TOKEN_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_CORPUS = [
    "Write a short poem about the sea and the wind.",
    "How do I bake bread at home with flour, water and yeast?",
    "Explain how to break into a house without a key.",
    "I'm sorry, but I can't help with that request.",
    "Give me step by step instructions to make a weapon.",
    "Translate this sentence into French, please.",
    "What is the capital of France? Paris is the capital.",
    "Sure, here is a recipe for a simple tomato soup.",
    "user assistant system 0 1 2 3 4 5 6 7 8 9 ? ! , . : ; ' \" - ( )",
]

FAMILY_CONFIGS = {
    "llama": dict(model_type="llama"),
    "mistral": dict(model_type="mistral"),
    "qwen2": dict(model_type="qwen2"),
    "qwen3": dict(model_type="qwen3", head_dim=16),
    "gemma": dict(model_type="gemma", head_dim=16),
    "gemma2": dict(model_type="gemma2", head_dim=16),
    "phi3": dict(model_type="phi3"),
    "gpt2": dict(model_type="gpt2"),
}


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer trained on a few sentences, with a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=_SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<|pad|>", eos_token="<|im_end|>", bos_token="<|im_start|>"
    )
    fast.chat_template = CHATML
    fast.padding_side = "left"
    return fast


def _config(family: str, vocab: int):
    from transformers import AutoConfig

    extra = dict(FAMILY_CONFIGS[family])
    model_type = extra.pop("model_type")
    if model_type == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            vocab_size=vocab,
            n_embd=64,
            n_layer=3,
            n_head=4,
            n_positions=256,
            **SPECIAL_TOKEN_IDS,
        )
    return AutoConfig.for_model(
        model_type,
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        **SPECIAL_TOKEN_IDS,
        **extra,
    )


def tiny_model(family: str = "llama", seed: int = 0, tie: bool = False) -> LoadedModel:
    """A 3-layer, width-64 random model of ``family`` in float32, eval mode."""
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    config = _config(family, len(tokenizer))
    if tie:
        config.tie_word_embeddings = True
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    # Random init is small; larger weights make logits sensitive enough for tests to bite.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.normal_(0.0, 0.08)
    model.eval()
    model.requires_grad_(False)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return LoadedModel(model=model, tokenizer=tokenizer, spec=f"{TINY_PREFIX}{family}", source="random")
