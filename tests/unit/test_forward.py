"""The one forward-pass module: padding and position ids, last-token log-probs, the refusal
log-odds, and the one hook installer (always removed, also after an exception)."""

from __future__ import annotations

import pytest
import torch

from refusal_core.model.forward import (
    block_hooks,
    encode_prompts,
    last_token_logprobs,
    left_padded,
    refusal_log_odds,
)
from refusal_core.prompts.chat import format_prompts
from tests.tiny import assert_no_hooks

PROMPTS = ["Hi", "Write a much longer poem about the sea and the wind"]


def test_left_padding_puts_every_last_token_at_minus_one_and_positions_ignore_padding():
    batch = left_padded([[5, 6, 7], [8]], pad=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 0]]


def test_last_token_logprobs_of_a_padded_batch_equal_each_prompt_alone(tiny_llama, one_thread):
    texts = format_prompts(tiny_llama.tokenizer, PROMPTS)
    with torch.no_grad():
        together = last_token_logprobs(tiny_llama.model, encode_prompts(tiny_llama, texts))
        alone = torch.cat([last_token_logprobs(tiny_llama.model, encode_prompts(tiny_llama, [text])) for text in texts])
        full = tiny_llama.model(**encode_prompts(tiny_llama, texts)).logits[:, -1].double().log_softmax(-1)
    assert together.dtype == torch.float64 and together.shape == (2, len(tiny_llama.tokenizer))
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.allclose(together, full, atol=1e-9)  # logits_to_keep=1 changes nothing


def test_refusal_log_odds_is_exact_at_the_extremes():
    logprobs = torch.log_softmax(torch.tensor([[0.0, 0.0, 0.0, 0.0], [800.0, 0.0, 0.0, 0.0]], dtype=torch.float64), -1)
    odds = refusal_log_odds(logprobs, [0])
    assert odds[0].item() == pytest.approx(torch.log(torch.tensor(1 / 3)).item())
    assert odds[1].item() == pytest.approx(800.0 - torch.log(torch.tensor(3.0)).item())  # p within rounding of 1


def test_block_hooks_read_and_replace_inputs_and_always_remove_them(tiny_llama, one_thread):
    batch = encode_prompts(tiny_llama, format_prompts(tiny_llama.tokenizer, PROMPTS))
    seen = {}
    with torch.no_grad(), block_hooks(tiny_llama.model, {1: lambda hidden: seen.setdefault(1, hidden.clone())}):
        tiny_llama.model(**batch)
    assert seen[1].shape[:2] == batch["input_ids"].shape
    assert_no_hooks(tiny_llama.model)
    with torch.no_grad(), block_hooks(tiny_llama.model, {0: torch.zeros_like}):
        zeroed = tiny_llama.model(**batch).logits
    with torch.no_grad():
        plain = tiny_llama.model(**batch).logits
    assert not torch.allclose(zeroed, plain)
    with pytest.raises(RuntimeError, match="boom"), block_hooks(tiny_llama.model, {2: lambda hidden: None}):
        raise RuntimeError("boom")
    assert_no_hooks(tiny_llama.model)
