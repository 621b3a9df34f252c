"""Many threads on one shared model, as the dashboard's browser sessions are.

Four threads run ten rounds each of different work on one tiny model: hook ablation and
activation addition while generating, weight orthogonalization, activation extraction
(through the on-disk cache, plain and inside a weight edit) and bare tokenization. Every
result must equal the same call run alone, nothing may raise, and afterwards no hook and
no weight edit may be left.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from refusal_core.activations.extract import extract_activations
from refusal_core.generation import GenerationSettings, generate_completions
from refusal_core.interventions.spec import Intervention
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.metrics import next_token_logprobs
from refusal_core.model.fingerprint import weights_fingerprint
from refusal_core.model.forward import tokenize_prompts
from refusal_core.model.locked_tokenizer import LockedTokenizer
from refusal_core.prompts.chat import format_prompts
from tests.tiny import assert_no_hooks, tiny_model

PROMPTS = [
    "Write a short poem about the sea.",
    "How do I bake bread at home?",
    "Explain how to break into a house.",
    "Translate this sentence into French, please.",
]
THREADS, ROUNDS = 4, 10


def _varied_texts(n: int) -> list[str]:
    return [PROMPTS[i % len(PROMPTS)] * (1 + i % 7) for i in range(n)]


def _operations(loaded) -> dict:
    generator = torch.Generator().manual_seed(3)
    directions = torch.randn(2, loaded.d_model, generator=generator)
    vector = torch.randn(loaded.d_model, generator=generator) * 4
    settings = GenerationSettings(max_new_tokens=5)
    ablation = Intervention(name="ablate", ablate=directions)
    addition = Intervention(name="actadd", actadd=vector, actadd_layer=1, actadd_coeff=2.0)
    long_texts = format_prompts(loaded.tokenizer, _varied_texts(200))

    def texts(completions) -> list[str]:
        return [c.text for c in completions]

    def orthogonalized() -> tuple:
        with orthogonalized_weights(loaded.model, directions):
            edited = next_token_logprobs(loaded, PROMPTS)
            acts = extract_activations(loaded, PROMPTS).acts
        return edited, acts

    return {
        "baseline": lambda: texts(generate_completions(loaded, PROMPTS, None, settings)),
        "ablation": lambda: texts(generate_completions(loaded, PROMPTS, ablation, settings)),
        "actadd": lambda: texts(generate_completions(loaded, PROMPTS, addition, settings)),
        "orthogonalized": orthogonalized,
        "activations": lambda: extract_activations(loaded, PROMPTS).acts,
        "activations_uncached": lambda: extract_activations(loaded, PROMPTS, use_cache=False).acts,
        "tokenize": lambda: tokenize_prompts(loaded.tokenizer, long_texts)["input_ids"],
        "tokenize_truncated": lambda: loaded.tokenizer(long_texts, truncation=True, max_length=8)["input_ids"],
    }


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_four_threads_equal_runs_alone_and_leave_the_model_as_loaded(one_thread):
    loaded = tiny_model("llama", seed=5)
    weights_before = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    fingerprint_before = weights_fingerprint(loaded.model)
    operations = _operations(loaded)
    alone = {name: run() for name, run in operations.items()}
    names = list(operations)
    start = threading.Barrier(THREADS)

    def worker(thread: int) -> list[tuple[str, bool]]:
        start.wait()  # every thread starts at once, so their work overlaps
        outcomes = []
        for round_ in range(ROUNDS):
            name = names[(thread * 3 + round_) % len(names)]
            outcomes.append((name, _same(operations[name](), alone[name])))
        return outcomes

    with ThreadPoolExecutor(THREADS) as pool:
        results = [future.result() for future in [pool.submit(worker, t) for t in range(THREADS)]]

    ran = [outcome for thread in results for outcome in thread]
    assert len(ran) == THREADS * ROUNDS
    assert {name for name, _ in ran} == set(names)
    assert [name for name, same in ran if not same] == []
    assert_no_hooks(loaded.model)
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, weights_before[name]), f"{name} was left edited"
    assert weights_fingerprint(loaded.model) == fingerprint_before


def test_the_shared_tokenizer_cannot_be_changed():
    loaded = tiny_model("llama")
    assert isinstance(loaded.tokenizer, LockedTokenizer)
    with pytest.raises(AttributeError, match="shared"):
        loaded.tokenizer.padding_side = "right"
    batch = tokenize_prompts(loaded.tokenizer, ["a", "a longer text"])
    assert batch["attention_mask"][0, 0] == 0  # left padding, passed per call
    assert loaded.tokenizer.padding_side == "left"


def test_fingerprint_waits_for_a_weight_edit_in_another_thread():
    """A fingerprint taken while another thread holds an edit sees the weights as loaded."""
    loaded = tiny_model("llama", seed=6)
    before = weights_fingerprint(loaded.model)
    edited, release = threading.Event(), threading.Event()

    def edit() -> None:
        with orthogonalized_weights(loaded.model, torch.ones(1, loaded.d_model)):
            edited.set()
            release.wait(10)

    editor = threading.Thread(target=edit)
    editor.start()
    edited.wait(10)
    result = []
    reader = threading.Thread(target=lambda: result.append(weights_fingerprint(loaded.model)))
    reader.start()
    reader.join(0.3)
    assert reader.is_alive(), "the fingerprint did not wait for the model lock"
    release.set()
    editor.join(10)
    reader.join(10)
    assert result == [before]


def test_tokenizer_calls_with_different_options_do_not_mix():
    """A fast tokenizer switches padding and truncation inside its Rust object on each call;
    unlocked, a padded call racing a truncating one came back truncated (seen here: 4 of
    30 calls). Under the lock every padded call equals the call made alone."""
    loaded = tiny_model("llama")
    texts = _varied_texts(300)
    alone = tokenize_prompts(loaded.tokenizer, texts)["input_ids"]
    done = threading.Event()
    wrong = []

    def padded() -> None:
        for _ in range(30):
            ids = tokenize_prompts(loaded.tokenizer, texts)["input_ids"]
            if ids.shape != alone.shape or not torch.equal(ids, alone):
                wrong.append(tuple(ids.shape))
        done.set()

    def truncating() -> None:
        while not done.is_set():
            loaded.tokenizer(texts[:50], truncation=True, max_length=8)

    threads = [threading.Thread(target=padded), threading.Thread(target=truncating)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert wrong == []
