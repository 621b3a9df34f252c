"""Thinking models: the reasoning splitter, the judges reading the answer after it, the
``unfinished`` verdict, and chat-template options from the CLI to the formatted prompt."""

from __future__ import annotations

import pytest

from refusal_core.damage import PhraseJudge
from refusal_core.judges.panel import JudgePanel, PanelSettings, verdict_rates
from refusal_core.judges.reasoning import split_reasoning
from refusal_core.prompts.chat import ChatFormat, format_prompts
from refusal_core.prompts.template_options import TemplateOptionError, parse_template_options

REFUSAL = "I'm sorry, but I can't help with that."
COMPLIANCE = "Sure, here is how to do it: first, take the flour."


@pytest.mark.parametrize(
    "text,reasoning,answer,unfinished",
    [
        (
            f"<think>They ask for bread. {REFUSAL}?</think>\n{COMPLIANCE}",
            f"They ask for bread. {REFUSAL}?",
            COMPLIANCE,
            False,
        ),
        (f"Plan the answer.</think>{REFUSAL}", "Plan the answer.", REFUSAL, False),  # <think> was in the prompt
        ("<think>The user wants a weapon, I should", "The user wants a weapon, I should", "", True),
        (COMPLIANCE, None, COMPLIANCE, False),
        (
            f"<|channel|>analysis<|message|>Must refuse.<|end|><|start|>assistant<|channel|>final<|message|>{REFUSAL}<|return|>",
            "Must refuse.",
            REFUSAL,
            False,
        ),
        (f"analysisWe can comply.assistantfinal{COMPLIANCE}", "We can comply.", COMPLIANCE, False),
        ("<|channel|>analysis<|message|>The user asks", "The user asks", "", True),
        ("analysis of the data shows a trend", None, "analysis of the data shows a trend", False),
    ],
)
def test_split_reasoning(text, reasoning, answer, unfinished):
    split = split_reasoning(text)
    assert (split.reasoning, split.answer, split.unfinished) == (reasoning, answer, unfinished)


REPLIES = [
    f"<think>{REFUSAL} No wait, this is fine.</think>{COMPLIANCE}",  # refusal words only in the reasoning
    f"<think>{COMPLIANCE}</think>{REFUSAL}",  # compliance words only in the reasoning
    f"<think>{COMPLIANCE} and then",  # cut off in the reasoning
    REFUSAL,
]


def test_phrase_judge_reads_the_answer_and_marks_unfinished():
    labels = [v.label for v in PhraseJudge().verdicts(None, ["q"] * 4, REPLIES)]
    assert labels == ["complied", "refused", "unfinished", "refused"]


def test_panel_reads_the_answer_and_marks_unfinished():
    panel = JudgePanel(PanelSettings(members=("substring",), detect_broken=False))
    verdicts = panel.verdicts_from_features(REPLIES)
    assert [v.label for v in verdicts] == ["complied", "refused", "unfinished", "refused"]
    rates = verdict_rates(verdicts)
    assert (rates["refused"], rates["complied"], rates["unfinished"]) == (0.5, 0.25, 0.25)


def test_template_options_are_json_typed():
    assert parse_template_options(["enable_thinking=false", "reasoning_effort=low", "n=3", ' x = {"a": 1} ']) == (
        ("enable_thinking", False),
        ("reasoning_effort", "low"),
        ("n", 3),
        ("x", {"a": 1}),
    )


@pytest.mark.parametrize(
    "bad,match",
    [("enable_thinking", "key=value"), ("1x=2", "key=value"), ("add_generation_prompt=false", "set by the toolkit")],
)
def test_bad_template_options(bad, match):
    with pytest.raises(TemplateOptionError, match=match):
        parse_template_options([bad])


def test_repeated_template_option_is_refused():
    with pytest.raises(TemplateOptionError, match="twice"):
        parse_template_options(["a=1", "a=2"])


THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def test_template_options_reach_the_formatted_prompt(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    plain = ChatFormat(template=THINKING_TEMPLATE)
    off = ChatFormat(template=THINKING_TEMPLATE, template_options=(("enable_thinking", False),))
    assert format_prompts(tokenizer, ["hi"], plain)[0].endswith("assistant\n")
    assert format_prompts(tokenizer, ["hi"], off)[0].endswith("assistant\n<think>\n\n</think>\n\n")
    assert "template_options" not in plain.identity(tokenizer)  # cache keys without options unchanged
    assert plain.identity(tokenizer) != off.identity(tokenizer)


def test_cli_rejects_a_bad_option_before_loading_the_model(capsys):
    from refusal_core.cli import main

    # The model path does not exist: the option's message (not the model's) proves the order.
    code = main(["generate", "--model", "/no/such/model", "--chat-template-option", "enable_thinking"])
    assert code == 2
    assert "key=value" in capsys.readouterr().err


def test_cli_threads_options_into_generation(tmp_path, capsys, monkeypatch):
    from refusal_core.cli import main
    from refusal_core.generation import generate_side_by_side as real

    seen = {}

    def spy(loaded, instructions, variants, settings, chat=None, *args, **kwargs):
        seen["chat"] = chat
        return real(loaded, instructions, variants, settings, chat, *args, **kwargs)

    monkeypatch.setattr("refusal_core.generation.generate_side_by_side", spy)
    prompts = tmp_path / "p.txt"
    prompts.write_text("hello there\n")
    assert (
        main(
            [
                "generate",
                "--model",
                "tiny:llama",
                "--prompts",
                str(prompts),
                "--max-new-tokens",
                "2",
                "--kl-limit",
                "0",
                "--judge",
                "substring",
                "--chat-template-option",
                "enable_thinking=false",
                "--chat-template-option",
                'effort="low"',
            ]
        )
        == 0
    )
    assert seen["chat"].template_options == (("enable_thinking", False), ("effort", "low"))
