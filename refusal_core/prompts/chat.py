"""Chat formatting with the model's own template, and the post-instruction token positions.

The post-instruction positions are the template tokens that follow the user's text (for
ChatML: ``<|im_end|>``, newline, ``<|im_start|>``, ``assistant``, newline). Arditi et al.
read refusal directions there. They are found from the rendered template itself, via the
tokenizer's character offsets, so no per-model table is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Sequence

from refusal_core.errors import UserError

__all__ = [
    "ChatFormat",
    "FALLBACK_TEMPLATE",
    "check_pairs",
    "TemplateError",
    "format_prompts",
    "format_with_reply",
    "post_instruction_count",
]

# Used only by tokenizers without a chat template (e.g. GPT-2 or a tiny test tokenizer).
FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% else %}Assistant: {{ message['content'] }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)

_PROBE = "Describe the colour of the sky on a clear day"


class TemplateError(UserError, ValueError):
    """The chat template does not place the instruction where it can be found."""


@dataclass(frozen=True)
class ChatFormat:
    """How instructions become model input: optional system prompt and template override."""

    system_prompt: str | None = None
    template: str | None = None
    # Extra variables for the chat template, as (name, value) pairs: e.g. enable_thinking=False
    # for Qwen 3 and SmolLM 3, reasoning_effort="low" for gpt-oss (see template_options.py).
    template_options: tuple[tuple[str, object], ...] = ()

    def options(self) -> dict[str, object]:
        return dict(self.template_options)

    def messages(self, instruction: str, reply: str | None = None) -> list[dict[str, str]]:
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        messages.append({"role": "user", "content": instruction})
        if reply is not None:
            messages.append({"role": "assistant", "content": reply})
        return messages

    def template_for(self, tokenizer) -> str:
        return self.template or getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE

    def identity(self, tokenizer) -> dict[str, str | None]:
        """What determines the formatted text, for cache keys (options only when given, so
        the keys of everything computed without them stay as they were)."""
        identity = {"system_prompt": self.system_prompt, "template": self.template_for(tokenizer)}
        if self.template_options:
            identity["template_options"] = json.dumps(self.options(), sort_keys=True, default=str)
        return identity


def _render(tokenizer, chat: ChatFormat, messages: list[dict[str, str]], **options) -> str:
    """``apply_chat_template``; a template that refuses the messages (``raise_exception`` in
    Jinja, e.g. "System role not supported") becomes a TemplateError naming the fix."""
    from jinja2.exceptions import TemplateError as JinjaTemplateError

    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=chat.template_for(tokenizer), tokenize=False, **options, **chat.options()
        )
    except JinjaTemplateError as err:
        if chat.system_prompt:
            raise TemplateError(
                f"This model's chat template rejects a system prompt ({err}); drop --system-prompt "
                "(or put its text at the start of each prompt instead)."
            ) from None
        raise TemplateError(
            f"This model's chat template cannot render a user turn ({err}); pass a template that can."
        ) from None


def format_prompts(tokenizer, instructions: Sequence[str], chat: ChatFormat | None = None) -> list[str]:
    """Render each instruction as a user turn followed by the generation prompt."""
    chat = chat or ChatFormat()
    return [_render(tokenizer, chat, chat.messages(text), add_generation_prompt=True) for text in instructions]


def format_with_reply(tokenizer, instruction: str, reply: str, chat: ChatFormat | None = None) -> tuple[str, str]:
    """(prompt text, prompt + reply text) for supervised training on the reply tokens."""
    chat = chat or ChatFormat()
    prompt = _render(tokenizer, chat, chat.messages(instruction), add_generation_prompt=True)
    full = _render(tokenizer, chat, chat.messages(instruction, reply))
    return prompt, full


def post_instruction_count(tokenizer, chat: ChatFormat | None = None) -> int:
    """Number of template tokens after the user's text, found on a probe instruction.

    Tokens that start at or after the end of the instruction's characters are
    post-instruction tokens. A template that repeats or rewrites the instruction text
    cannot be analysed this way and raises TemplateError.
    """
    chat = chat or ChatFormat()
    text = format_prompts(tokenizer, [_PROBE], chat)[0]
    end = text.rfind(_PROBE)
    if end < 0:
        raise TemplateError(
            "The chat template does not contain the user's text verbatim; pass a ChatFormat(template=...) that does."
        )
    end += len(_PROBE)
    if getattr(tokenizer, "is_fast", False):
        offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        count = sum(1 for start, _ in offsets if start >= end)
    else:
        # Slow tokenizers have no offsets; the suffix tokenized alone is the best estimate.
        count = len(tokenizer(text[end:], add_special_tokens=False)["input_ids"])
    if count == 0:
        raise TemplateError(
            "The chat template puts no tokens after the user's text; choose a template with an assistant header."
        )
    return count


def check_pairs(instructions: Sequence[str], completions: Sequence[str]) -> None:
    """Fail unless there is exactly one reply per instruction."""
    if len(instructions) != len(completions):
        raise ValueError(
            f"{len(instructions)} instructions but {len(completions)} completions; give one reply per instruction."
        )
