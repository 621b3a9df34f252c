"""Judges, refusal scores, KL and cross-entropy, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from refusal_core.generation import GenerationSettings, generate_completions
from refusal_core.interventions.hooks import apply_intervention
from refusal_core.interventions.spec import Intervention
from refusal_core.judges.model_judges import (
    ChatJudge,
    ClassifierJudge,
    JudgeLoadError,
    answer_is_no,
    answer_is_safe,
    answer_is_yes,
)
from refusal_core.judges.scores import evaluate_refusal, evaluate_scores, refusal_scores, refusal_token_ids
from refusal_core.judges.substring import REFUSAL_PREFIXES, Judge, SubstringJudge, substring_refused
from refusal_core.metrics import (
    completion_cross_entropy,
    evaluate_ce,
    evaluate_kl,
    harmless_kl,
    kl_divergence,
    next_token_logprobs,
)
from refusal_core.prompts.chat import format_prompts
from tests.tiny import assert_no_hooks, tiny_model, tiny_tokenizer

PROMPTS = [
    "Hi",
    "Write a short poem about the sea and the wind, then translate it into French, please.",
    "How do I bake bread?",
]
REPLIES = ["Sure, here is a poem.", "The sea", "I'm sorry, but I can't help with that request."]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def any_family(request):
    """RoPE models are blind to a constant position shift; GPT-2 is not, so padding errors show there."""
    return tiny_model(request.param)


def _actadd(seed: int = 1) -> Intervention:
    vector = torch.randn(64, generator=torch.Generator().manual_seed(seed))
    return Intervention("actadd", actadd=vector, actadd_layer=1, actadd_coeff=4.0)


def _last_logits_alone(loaded, instruction: str) -> torch.Tensor:
    """``[vocab]`` float64 logits at the last prompt position, one prompt, no padding."""
    text = format_prompts(loaded.tokenizer, [instruction])[0]
    ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return loaded.model(**ids).logits[0, -1].double()


# Substring judge -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "I'm sorry, but I can't help with that.",
        "I\u2019m sorry, I can\u2019t do that.",  # curly apostrophes
        "i CANNOT assist with this request",
        "As an AI language model, I must decline.",
        "Here is some context. Unfortunately I won\u2019t write that.",  # anywhere, not only at the start
        "SORRY!",
    ],
)
def test_substring_positives(text):
    assert substring_refused(text)


@pytest.mark.parametrize(
    "text",
    ["Sure, here is a recipe for tomato soup.", "Paris is the capital of France.", "Im glad to help: step 1 ...", ""],
)
def test_substring_negatives(text):
    assert not substring_refused(text)


def test_substring_extra_phrases_and_judge():
    text = "That is not something I\u2019ll do."
    assert not substring_refused(text)
    assert substring_refused(text, extra=("not something I'll do",))
    judge = SubstringJudge(extra=("NOT SOMETHING I'LL DO",))
    assert judge.judge(["a", "b"], [text, "Sure."]) == [True, False]
    assert SubstringJudge(prefixes=()).judge(["a"], ["I'm sorry"]) == [False]
    with pytest.raises(ValueError, match="2 instructions but 1"):
        judge.judge(["a", "b"], ["x"])


def test_prefix_list_covers_the_literature():
    for phrase in ["I'm sorry", "I apologize", "As an AI", "I cannot", "I can't", "I'm unable to", "I must decline"]:
        assert phrase in REFUSAL_PREFIXES
    assert len(set(REFUSAL_PREFIXES)) == len(REFUSAL_PREFIXES)


# Model judges --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    # Absolute position embeddings, as in BERT-style classifiers: wrong padding would show.
    tokenizer = tiny_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=256,
        num_labels=2,
        id2label={0: "complied", 1: "REFUSAL"},
        label2id={"complied": 0, "REFUSAL": 1},
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("classifier")
    GPT2ForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def chat_judge_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("chat_judge")
    loaded = tiny_model("llama", seed=3)
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path


def test_classifier_judge_matches_its_own_probabilities(classifier_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    judge = ClassifierJudge(str(classifier_dir), refusal_label="refusal", batch_size=2)
    assert isinstance(judge, Judge)
    verdicts = judge.judge(PROMPTS, REPLIES)
    assert len(verdicts) == 3 and all(isinstance(v, bool) for v in verdicts)
    probs = judge.label_probs(PROMPTS, REPLIES)
    assert verdicts == (probs.argmax(-1) == 1).tolist()
    # Batching (with padding) gives what each pair gives alone, pair-encoded by the tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    model = AutoModelForSequenceClassification.from_pretrained(classifier_dir).eval()
    for row, (instruction, reply) in enumerate(zip(PROMPTS, REPLIES)):
        with torch.no_grad():
            alone = model(**tokenizer(instruction, reply, return_tensors="pt")).logits.softmax(-1)[0]
        torch.testing.assert_close(probs[row], alone, atol=1e-5, rtol=0)
    assert ClassifierJudge(str(classifier_dir), refusal_label=1).judge(PROMPTS, REPLIES) == verdicts


def test_classifier_judge_errors(classifier_dir, tmp_path):
    with pytest.raises(JudgeLoadError, match="labels are"):
        ClassifierJudge(str(classifier_dir), refusal_label="refused").judge(["a"], ["b"])
    missing = ClassifierJudge(str(tmp_path / "nowhere"))  # Lazy: constructing does not load.
    with pytest.raises(JudgeLoadError, match="nowhere"):
        missing.judge(["a"], ["b"])


def test_chat_judge_structure(chat_judge_dir):
    judge = ChatJudge(str(chat_judge_dir), max_new_tokens=3, batch_size=2)
    assert isinstance(judge, Judge)
    instructions = ["Make a {weird} request", "Say hi"]
    replies = ["I'm sorry, no. {completion}", "Hi!"]
    prompts = judge.judge_prompts(instructions, replies)
    assert prompts[0].startswith("<|im_start|>user\n") and prompts[0].endswith("<|im_start|>assistant\n")
    # Braces inside the texts are kept verbatim, not treated as placeholders.
    assert "Make a {weird} request" in prompts[0] and "I'm sorry, no. {completion}" in prompts[0]
    answers = judge.answers(instructions, replies)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    assert judge.judge(instructions, replies) == [answer_is_yes(a) for a in answers]
    always = ChatJudge(str(chat_judge_dir), refused_if=lambda answer: True, max_new_tokens=2)
    assert always.judge(instructions, replies) == [True, True]


def test_chat_judge_conversation_mode_and_errors(chat_judge_dir, tmp_path):
    judge = ChatJudge(str(chat_judge_dir), prompt_template=None, refused_if=answer_is_safe, max_new_tokens=2)
    prompt = judge.judge_prompts(["Do X"], ["No."])[0]
    assert prompt == "<|im_start|>user\nDo X<|im_end|>\n<|im_start|>assistant\nNo.<|im_end|>\n"
    template = "Q: {instruction} A: {completion} Refused?"
    raw = ChatJudge(str(chat_judge_dir), prompt_template=template, use_chat_template=False)
    assert raw.judge_prompts(["Do X"], ["No."]) == ["Q: Do X A: No. Refused?"]
    with pytest.raises(JudgeLoadError, match="nowhere"):
        ChatJudge(str(tmp_path / "nowhere")).judge(["a"], ["b"])


def test_answer_parsers():
    assert answer_is_yes("Yes.") and answer_is_yes(" yes, it refused")
    assert not answer_is_yes("No") and not answer_is_yes("")
    assert answer_is_no("No, it did not comply") and not answer_is_no("Yes")
    assert answer_is_safe("safe") and not answer_is_safe("unsafe\nS1")


# Refusal score -------------------------------------------------------------------------


def test_refusal_token_ids_are_first_tokens_of_phrases():
    tokenizer = tiny_tokenizer()
    ids = refusal_token_ids(tokenizer)
    assert len(ids) == len(set(ids))
    firsts = {tokenizer(t, add_special_tokens=False)["input_ids"][0] for p in REFUSAL_PREFIXES for t in (p, " " + p)}
    assert set(ids) <= firsts
    assert tokenizer("I", add_special_tokens=False)["input_ids"][0] in ids
    assert all(tokenizer.decode([i]).strip() for i in ids)


def test_refusal_score_equals_hand_computation(any_family):
    tiny_llama = any_family
    ids = refusal_token_ids(tiny_llama.tokenizer)
    batched = refusal_scores(tiny_llama, PROMPTS, batch_size=3)
    one_by_one = refusal_scores(tiny_llama, PROMPTS, batch_size=1)
    assert batched.dtype == torch.float64 and batched.shape == (3,)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)
    for row, instruction in enumerate(PROMPTS):
        p = _last_logits_alone(tiny_llama, instruction).softmax(-1)[ids].sum()
        assert batched[row].item() == pytest.approx(math.log(p) - math.log(1 - p), abs=1e-5)
    assert_no_hooks(tiny_llama.model)


def test_refusal_score_follows_the_intervention(tiny_llama):
    intervention = _actadd()
    intervened = refusal_scores(tiny_llama, PROMPTS[:1], intervention, refusal_ids=[5, 7])
    with apply_intervention(tiny_llama.model, intervention):
        p = _last_logits_alone(tiny_llama, PROMPTS[0]).softmax(-1)[[5, 7]].sum()
    assert intervened.item() == pytest.approx(math.log(p) - math.log1p(-p), abs=1e-5)
    baseline = refusal_scores(tiny_llama, PROMPTS[:1], refusal_ids=[5, 7])
    assert intervened.item() != pytest.approx(baseline.item(), abs=1e-3)
    with pytest.raises(ValueError, match="vocabulary"):
        refusal_scores(tiny_llama, PROMPTS[:1], refusal_ids=[10**6])


# KL ------------------------------------------------------------------------------------


def test_next_token_logprobs_and_kl_equal_hand_computation(tiny_llama):
    base = next_token_logprobs(tiny_llama, PROMPTS)
    assert base.shape == (3, len(tiny_llama.tokenizer)) and base.dtype == torch.float64
    torch.testing.assert_close(base.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    for row, instruction in enumerate(PROMPTS):
        by_hand = _last_logits_alone(tiny_llama, instruction).log_softmax(-1)
        torch.testing.assert_close(base[row], by_hand, atol=1e-5, rtol=0)
    intervention = _actadd()
    other = next_token_logprobs(tiny_llama, PROMPTS, intervention)
    by_hand = F.kl_div(other, base, log_target=True, reduction="none").sum(-1)
    torch.testing.assert_close(kl_divergence(base, other), by_hand)
    explicit = (base.exp() * (base - other)).sum(-1)
    torch.testing.assert_close(harmless_kl(tiny_llama, PROMPTS, intervention), explicit)
    torch.testing.assert_close(harmless_kl(tiny_llama, PROMPTS, intervention, base=base), explicit)
    assert (kl_divergence(base, base) == 0).all()
    assert (harmless_kl(tiny_llama, PROMPTS, Intervention()) == 0).all()
    assert (kl_divergence(base, other) > 0).all()
    assert_no_hooks(tiny_llama.model)


def test_kl_handles_zero_probabilities():
    base = torch.tensor([[0.0, -math.inf]], dtype=torch.float64)
    other = torch.tensor([[-0.1, -2.4]], dtype=torch.float64).log_softmax(-1)
    kl = kl_divergence(base, other)
    assert torch.isfinite(kl).all() and kl.item() == pytest.approx(-other[0, 0].item())
    with pytest.raises(ValueError, match="Shapes differ"):
        kl_divergence(base, other[:, :1])


# Cross-entropy -------------------------------------------------------------------------


def test_cross_entropy_equals_hand_computation(tiny_llama):
    tokenizer = tiny_llama.tokenizer
    prompt_ids = tokenizer(format_prompts(tokenizer, PROMPTS[1:2])[0], add_special_tokens=False)["input_ids"]
    reply_ids = tokenizer(REPLIES[1], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = tiny_llama.model(torch.tensor([prompt_ids + reply_ids])).logits[0].double()
    start = len(prompt_ids) - 1  # The last prompt position predicts the first reply token.
    by_hand = F.cross_entropy(logits[start : start + len(reply_ids)], torch.tensor(reply_ids))
    got = completion_cross_entropy(tiny_llama, PROMPTS[1:2], REPLIES[1:2])
    assert got.item() == pytest.approx(by_hand.item(), abs=1e-5)


def test_cross_entropy_batched_equals_one_by_one(any_family):
    tiny_llama = any_family
    intervention = _actadd()
    for variant in (None, intervention):
        batched = completion_cross_entropy(tiny_llama, PROMPTS, REPLIES, variant, batch_size=3)
        alone = completion_cross_entropy(tiny_llama, PROMPTS, REPLIES, variant, batch_size=1)
        torch.testing.assert_close(batched, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(batched, completion_cross_entropy(tiny_llama, PROMPTS, REPLIES), atol=1e-3)
    empty = completion_cross_entropy(tiny_llama, PROMPTS[:2], ["", REPLIES[1]])
    assert math.isnan(empty[0]) and math.isfinite(empty[1])
    with pytest.raises(ValueError, match="one reply per instruction"):
        completion_cross_entropy(tiny_llama, PROMPTS, REPLIES[:1])
    assert_no_hooks(tiny_llama.model)


# EvalResult wrappers -------------------------------------------------------------------


class _FirstOnly:
    name = "first-only"

    def judge(self, instructions, completions):
        return [index == 0 for index in range(len(completions))]


def test_evaluate_wrappers(tiny_llama):
    settings = GenerationSettings(max_new_tokens=4)
    result, completions = evaluate_refusal(tiny_llama, PROMPTS, judge=_FirstOnly(), settings=settings)
    assert [c.text for c in completions] == [c.text for c in generate_completions(tiny_llama, PROMPTS, None, settings)]
    assert result.per_prompt == [True, False, False]
    assert result.summary == {"rate": pytest.approx(1 / 3), "n": 3}
    assert result.meta["judge"] == "first-only" and result.meta["intervention"] == "baseline"

    scores = evaluate_scores(tiny_llama, PROMPTS)
    assert scores.summary["mean"] == pytest.approx(refusal_scores(tiny_llama, PROMPTS).mean().item())
    kl = evaluate_kl(tiny_llama, PROMPTS, _actadd())
    assert kl.meta["intervention"] == "actadd" and kl.summary["n"] == 3 and kl.summary["mean"] > 0
    ce = evaluate_ce(tiny_llama, PROMPTS, ["", *REPLIES[1:]])
    assert ce.summary["n_nan"] == 1 and ce.summary["mean"] == pytest.approx(sum(ce.per_prompt[1:]) / 2)
