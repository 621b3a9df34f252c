"""Replies of reasoning ("thinking") models: the reasoning block and the answer after it.

Judges read the answer, not the reasoning: a model that reasons about a harmful request
and then refuses has refused, and one that quotes a refusal in its reasoning and then
complies has complied. A reply cut off inside its reasoning has no answer yet; it is
``unfinished``, never ``complied``.

Recognised layouts:

- ``<think> ... </think> answer`` (Qwen 3, DeepSeek-R1, SmolLM 3, GLM and others), also
  when the template opened ``<think>`` in the prompt so the reply starts inside it
  (``... </think> answer``);
- gpt-oss's harmony channels, with special tokens kept
  (``<|channel|>analysis<|message|> ... <|end|> ... <|channel|>final<|message|> answer``) or
  stripped by decoding (``analysis ... assistantfinal answer``).

A reply with none of these markers is all answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SplitReply", "answers_and_unfinished", "split_reasoning"]

_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_FINAL = re.compile(r"<\|channel\|>\s*final\s*(?:<\|constrain\|>\S*)?\s*<\|message\|>")
_ANALYSIS = re.compile(r"^\s*(?:<\|start\|>\s*assistant\s*)?<\|channel\|>\s*analysis\s*<\|message\|>")
_FINAL_STRIPPED = re.compile(r"assistant\s*final", re.IGNORECASE)
_ANALYSIS_STRIPPED = re.compile(r"^\s*analysis(?=[A-Z])")
_END = re.compile(r"<\|(?:return|end|call)\|>\s*$")
_TURN_END = re.compile(r"<\|end\|>\s*(?:<\|start\|>\s*assistant\s*)?$")


@dataclass(frozen=True)
class SplitReply:
    """``reasoning`` (None when the reply has no reasoning block), the ``answer`` judges read,
    and whether the reply stopped inside its reasoning (``unfinished``: no answer at all)."""

    reasoning: str | None
    answer: str
    unfinished: bool = False


def _think(text: str) -> SplitReply | None:
    close = text.rfind(_THINK_CLOSE)
    if close >= 0:
        open_at = text.find(_THINK_OPEN)
        start = open_at + len(_THINK_OPEN) if 0 <= open_at < close else 0
        return SplitReply(text[start:close].strip(), text[close + len(_THINK_CLOSE) :].strip())
    open_at = text.find(_THINK_OPEN)
    if open_at >= 0 and not text[:open_at].strip():
        return SplitReply(text[open_at + len(_THINK_OPEN) :].strip(), "", unfinished=True)
    return None


def _harmony(text: str) -> SplitReply | None:
    final = _FINAL.search(text)
    if final:
        reasoning = _TURN_END.sub("", _ANALYSIS.sub("", text[: final.start()]).strip()).strip()
        return SplitReply(reasoning or None, _END.sub("", text[final.end() :]).strip())
    if _ANALYSIS.match(text):
        return SplitReply(_ANALYSIS.sub("", text).strip(), "", unfinished=True)
    if _ANALYSIS_STRIPPED.match(text):
        final = _FINAL_STRIPPED.search(text)
        if final:
            return SplitReply(_ANALYSIS_STRIPPED.sub("", text[: final.start()]).strip(), text[final.end() :].strip())
        return SplitReply(_ANALYSIS_STRIPPED.sub("", text).strip(), "", unfinished=True)
    return None


def split_reasoning(text: str) -> SplitReply:
    """The reasoning and the answer of one reply (see the module docstring)."""
    return _think(text) or _harmony(text) or SplitReply(None, text)


def answers_and_unfinished(replies) -> tuple[list[str], list[bool]]:
    """The answer of each reply (what judges read) and which replies stopped in their reasoning."""
    splits = [split_reasoning(text) for text in replies]
    return [split.answer for split in splits], [split.unfinished for split in splits]
