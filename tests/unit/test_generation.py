"""Batched side-by-side generation: equality with one-variant runs, stopping, locking, hygiene."""

from __future__ import annotations

import threading

import pytest
import torch

from refusal_core.generation import (
    GenerationSettings,
    end_of_turn_ids,
    generate_completions,
    generate_side_by_side,
)
from refusal_core.interventions.spec import Intervention
from refusal_core.model.forward import tokenize_prompts
from refusal_core.prompts.chat import FALLBACK_TEMPLATE, ChatFormat, format_prompts
from tests.tiny import assert_no_hooks, tiny_model, tiny_tokenizer

PROMPTS = [
    "Hi",
    "Write a short poem about the sea and the wind, then translate it into French, please.",
    "How do I bake bread?",
]
SETTINGS = GenerationSettings(max_new_tokens=8, batch_size=4)


def _variants(d_model: int, seed: int = 1) -> list[Intervention]:
    generator = torch.Generator().manual_seed(seed)
    return [
        Intervention(),
        Intervention("ablate2", ablate=torch.randn(2, d_model, generator=generator)),
        Intervention("actadd", actadd=torch.randn(d_model, generator=generator), actadd_layer=1, actadd_coeff=4.0),
    ]


def _texts(completions) -> list[str]:
    return [completion.text for completion in completions]


def test_end_of_turn_ids_chatml():
    tokenizer = tiny_tokenizer()
    assert end_of_turn_ids(tokenizer) == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_end_of_turn_ids_found_from_template_not_from_a_table():
    tokenizer = tiny_tokenizer()
    # A made-up template whose turns end with <|im_start|>: found, then EOS appended.
    odd = ChatFormat(template="{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_start|>{% endfor %}")
    assert end_of_turn_ids(tokenizer, odd) == [tokenizer.convert_tokens_to_ids("<|im_start|>"), tokenizer.eos_token_id]
    # A plain-text turn end (newline) is not a stop token; only EOS remains.
    assert end_of_turn_ids(tokenizer, ChatFormat(template=FALLBACK_TEMPLATE)) == [tokenizer.eos_token_id]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_side_by_side_equals_each_variant_alone(family):
    loaded = tiny_model(family)
    variants = _variants(loaded.d_model)
    together = generate_side_by_side(loaded, PROMPTS, variants, SETTINGS)
    assert list(together) == [variant.name for variant in variants]
    for variant in variants:
        alone = generate_completions(loaded, PROMPTS, variant, GenerationSettings(max_new_tokens=8, batch_size=1))
        assert _texts(together[variant.name]) == _texts(alone), variant.name
        assert [c.instruction for c in together[variant.name]] == PROMPTS
        assert {c.variant for c in together[variant.name]} == {variant.name}
    # The interventions really change the text, so the equality above is not vacuous.
    assert _texts(together["actadd"]) != _texts(together["baseline"])
    assert _texts(together["ablate2"]) != _texts(together["baseline"])
    assert_no_hooks(loaded.model)


def test_baseline_equals_plain_generate(tiny_llama):
    tokenizer, model = tiny_llama.tokenizer, tiny_llama.model
    stops = end_of_turn_ids(tokenizer)
    baseline = generate_completions(tiny_llama, PROMPTS, None, SETTINGS)
    for prompt, completion in zip(format_prompts(tokenizer, PROMPTS), baseline):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        out = model.generate(
            ids, max_new_tokens=8, do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id
        )
        new = out[0, ids.shape[1] :].tolist()
        assert completion.text == tokenizer.decode(new, skip_special_tokens=True)
        assert completion.n_tokens == len(new) == 8 and not completion.stopped


def test_stops_at_end_of_turn_per_row(tiny_llama):
    """Force <|im_end|> as row 0's third token: its reply is cut there, the others run on."""
    model, tokenizer = tiny_llama.model, tiny_llama.tokenizer
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    calls = []

    def force_end(module, args, logits):
        calls.append(1)
        if len(calls) == 3:
            logits = logits.clone()
            logits[0, :, end_id] += 1e4
        return logits

    handle = model.lm_head.register_forward_hook(force_end)
    try:
        completions = generate_completions(tiny_llama, PROMPTS, None, SETTINGS)
    finally:
        handle.remove()
    assert (completions[0].n_tokens, completions[0].stopped) == (2, True)
    assert all(c.n_tokens == 8 and not c.stopped for c in completions[1:])
    assert "<|im_end|>" not in completions[0].text
    assert_no_hooks(model)


def test_chunking_counts_rows_and_reports_progress(tiny_llama):
    seen = []
    settings = GenerationSettings(max_new_tokens=4, batch_size=4)
    result = generate_side_by_side(
        tiny_llama, PROMPTS, _variants(64), settings, progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(4, 9), (8, 9), (9, 9)]
    assert all(len(completions) == 3 for completions in result.values())


def test_no_hooks_left_after_progress_raises(tiny_llama):
    def explode(done: int, total: int) -> None:
        raise RuntimeError("browser went away")

    with pytest.raises(RuntimeError, match="browser went away"):
        settings = GenerationSettings(max_new_tokens=2, batch_size=2)
        generate_side_by_side(tiny_llama, PROMPTS, _variants(64), settings, progress=explode)
    assert_no_hooks(tiny_llama.model)


def test_concurrent_callers_do_not_see_each_others_interventions(tiny_llama):
    first = _variants(64, seed=1)
    generator = torch.Generator().manual_seed(5)
    second = [
        Intervention("ablate_b", ablate=torch.randn(1, 64, generator=generator)),
        Intervention("actadd_b", actadd=torch.randn(64, generator=generator), actadd_layer=2, actadd_coeff=-3.0),
    ]
    settings = GenerationSettings(max_new_tokens=6, batch_size=2)
    expected = [generate_side_by_side(tiny_llama, PROMPTS, variants, settings) for variants in (first, second)]
    results: list = [None, None]
    errors: list = []
    barrier = threading.Barrier(2)

    def run(index: int, variants: list[Intervention]) -> None:
        try:
            barrier.wait()
            results[index] = generate_side_by_side(tiny_llama, PROMPTS, variants, settings)
        except Exception as err:  # Surface thread failures in the main thread.
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, v)) for i, v in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for got, want in zip(results, expected):
        assert {name: _texts(c) for name, c in got.items()} == {name: _texts(c) for name, c in want.items()}
    assert_no_hooks(tiny_llama.model)


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny_llama):
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7)
    state = torch.get_rng_state()
    first = _texts(generate_completions(tiny_llama, PROMPTS, None, settings))
    assert torch.equal(state, torch.get_rng_state())
    assert first == _texts(generate_completions(tiny_llama, PROMPTS, None, settings))
    greedy = _texts(generate_completions(tiny_llama, PROMPTS, None, GenerationSettings(max_new_tokens=8)))
    assert first != greedy


def test_duplicate_variant_names_rejected(tiny_llama):
    with pytest.raises(ValueError, match="unique.*baseline"):
        generate_side_by_side(tiny_llama, PROMPTS, [Intervention(), Intervention()])
    with pytest.raises(ValueError, match="at least one"):
        generate_side_by_side(tiny_llama, PROMPTS, [])


@pytest.mark.parametrize(
    "bad",
    [dict(max_new_tokens=0), dict(temperature=0.0), dict(top_p=0.0), dict(top_p=1.5), dict(batch_size=0)],
)
def test_settings_validated(bad):
    with pytest.raises(ValueError):
        GenerationSettings(**bad)


def test_left_padded_batch_is_what_generate_sees(tiny_llama):
    """Guard the assumption the equality rests on: tokenize_prompts pads on the left."""
    batch = tokenize_prompts(tiny_llama.tokenizer, format_prompts(tiny_llama.tokenizer, PROMPTS))
    assert (batch["attention_mask"][:, -1] == 1).all()
    assert (batch["attention_mask"][:, 0] == 0).any()
