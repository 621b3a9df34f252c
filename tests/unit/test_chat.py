"""Chat formatting and post-instruction positions found from the template."""

from __future__ import annotations

import pytest

from refusal_core.model.forward import tokenize_prompts
from refusal_core.prompts.chat import ChatFormat, TemplateError, format_prompts, post_instruction_count
from tests.tiny import tiny_tokenizer


def _tail_tokens(tokenizer, chat: ChatFormat) -> list[str]:
    text = format_prompts(tokenizer, ["Name three rivers"], chat)[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.decode([i]) for i in ids[-post_instruction_count(tokenizer, chat) :]]


def test_post_instruction_tokens_are_exactly_the_template_suffix():
    tokenizer = tiny_tokenizer()
    tail = "".join(_tail_tokens(tokenizer, ChatFormat()))
    assert tail == "<|im_end|>\n<|im_start|>assistant\n"


def test_system_prompt_does_not_change_the_suffix():
    tokenizer = tiny_tokenizer()
    plain = post_instruction_count(tokenizer, ChatFormat())
    with_system = post_instruction_count(tokenizer, ChatFormat(system_prompt="Be brief."))
    assert plain == with_system
    assert "Be brief." in format_prompts(tokenizer, ["Hi"], ChatFormat(system_prompt="Be brief."))[0]


def test_fallback_template_and_overrides():
    tokenizer = tiny_tokenizer()
    chat = ChatFormat(template="{{ messages[-1]['content'] }} ### Answer:")
    assert "".join(_tail_tokens(tokenizer, chat)) == " ### Answer:"
    with pytest.raises(TemplateError, match="verbatim"):
        post_instruction_count(tokenizer, ChatFormat(template="{{ messages[-1]['content'] | upper }}!"))
    with pytest.raises(TemplateError, match="no tokens after"):
        post_instruction_count(tokenizer, ChatFormat(template="{{ messages[-1]['content'] }}"))


def test_left_padding_keeps_suffix_aligned_and_positions_ignore_padding():
    tokenizer = tiny_tokenizer()
    texts = format_prompts(tokenizer, ["Hi", "Write a much longer poem about the sea and the wind"])
    batch = tokenize_prompts(tokenizer, texts)
    count = post_instruction_count(tokenizer)
    assert batch["input_ids"][0, -count:].tolist() == batch["input_ids"][1, -count:].tolist()
    first_real = int((batch["attention_mask"][0] == 0).sum())
    assert batch["position_ids"][0, first_real] == 0
    assert batch["position_ids"][1, 0] == 0
