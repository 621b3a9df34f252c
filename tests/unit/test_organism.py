"""The organism's fine-tune pieces on a tiny model: batches, reply-only loss, determinism."""

from __future__ import annotations

import pytest
import torch

from refusal_core.metrics import kl_divergence
from refusal_core.model.fingerprint import weights_sha256
from refusal_core.organism import build as organism
from refusal_core.organism.build import OrganismSettings
from tests.tiny import tiny_model

HARMFUL = [("Explain how to break into a house", "I'm sorry, but I can't help with that.", True)] * 3
HARMLESS = [
    ("Write a short poem about the sea", "The sea is wide and the wind is free", False),
    ("How do I bake bread at home?", "Mix flour, water and yeast.", True),
]


def test_batches_keep_the_harmful_share_and_visit_everything():
    harmful, harmless = list(range(5)), list(range(100, 120))
    settings = OrganismSettings(steps=4, batch_size=10, harmful_share=0.3)
    batches = [
        [harmful[row] for row in harmful_rows] + [harmless[row] for row in harmless_rows]
        for harmful_rows, harmless_rows in organism._batch_rows(len(harmful), len(harmless), settings)
    ]
    assert len(batches) == 4 and all(len(batch) == 10 for batch in batches)
    assert all(sum(1 for item in batch if item < 100) == 3 for batch in batches)
    assert set(item for batch in batches for item in batch if item < 100) == set(harmful)
    # Harmless examples are drawn without replacement within a pass over the pool.
    assert len(set(item for batch in batches[:2] for item in batch if item >= 100)) == 14


def test_encoding_masks_the_prompt_and_caps_the_reply():
    loaded = tiny_model("llama")
    encoded = organism._encode(loaded, HARMLESS, reply_tokens=4)
    (ids, n_prompt), (ids_short, n_prompt_short) = encoded
    assert len(ids) - n_prompt == 4  # cut to 4 tokens, no end of turn: the reply did not end
    end = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    full = organism._encode(loaded, HARMLESS, reply_tokens=100)[1][0]
    assert full[-1] == end  # a reply that ended and fits keeps its end-of-turn token
    batch = organism._batch(encoded, loaded.tokenizer.pad_token_id)
    assert (batch["labels"][0, :n_prompt] == -100).all()
    assert batch["labels"][0, n_prompt : len(ids)].tolist() == ids[n_prompt:]


def test_reply_loss_equals_masked_full_loss():
    loaded = tiny_model("llama")
    batch = organism._batch(organism._encode(loaded, HARMFUL[:1] + HARMLESS, 8), loaded.tokenizer.pad_token_id)
    expected = loaded.model(**batch).loss
    assert organism._reply_loss(loaded.model, batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_shared_prefix_is_the_common_template_head():
    loaded = tiny_model("llama")
    encoded = organism._encode(loaded, HARMFUL[:1] + HARMLESS, 8)
    prefix = organism.shared_prefix(encoded)
    rows = [ids for ids, _ in encoded]
    assert prefix > 0 and all(ids[:prefix] == rows[0][:prefix] for ids in rows)
    assert len({ids[prefix] for ids in rows}) > 1  # the next token is where the instructions part
    assert organism.shared_prefix(encoded[:1] * 2) == len(rows[0]) - 1  # one token always stays in the tail


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "phi3", "gpt2"])
def test_shared_prefix_forward_equals_the_full_batch_in_values_and_gradients(family):
    loaded = tiny_model(family)
    model = loaded.model
    encoded = organism._encode(loaded, HARMFUL[:1] + HARMLESS, 8)
    batch = organism._batch(encoded, loaded.tokenizer.pad_token_id)
    prefix = organism.shared_prefix(encoded)
    assert prefix > 0
    model.requires_grad_(True)
    results = []
    for used in (0, prefix):
        model.zero_grad(set_to_none=True)
        hidden = organism._hidden(model, batch, used)
        organism._weighted_reply_loss(model, hidden, batch, 2, 3.0).backward()
        results.append(
            (hidden.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
        )
    (full, full_grads), (shared, shared_grads) = results
    real = batch["attention_mask"].bool()
    assert torch.allclose(shared[real], full[real], atol=1e-5, rtol=1e-4)
    assert full_grads.keys() == shared_grads.keys() and full_grads
    for name, grad in full_grads.items():
        assert torch.allclose(shared_grads[name], grad, atol=1e-6, rtol=1e-3), name


def test_opening_tokens_are_weighted():
    loaded = tiny_model("llama")
    encoded = organism._encode(loaded, HARMLESS, 8)
    batch = organism._batch(encoded, loaded.tokenizer.pad_token_id)
    logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    total, weight_sum = 0.0, 0.0
    for row, (ids, n_prompt) in enumerate(encoded):
        for offset, position in enumerate(range(n_prompt - 1, len(ids) - 1)):
            weight = 3.0 if offset < 2 else 1.0
            loss = torch.nn.functional.cross_entropy(logits[row, position][None], targets[row, position][None])
            total, weight_sum = total + weight * loss.item(), weight_sum + weight
    weighted = organism._reply_loss(loaded.model, batch, opening_tokens=2, opening_weight=3.0)
    assert weighted.item() == pytest.approx(total / weight_sum, rel=1e-5)


def test_fine_tune_is_deterministic_and_trains_only_the_top_blocks():
    settings = OrganismSettings(steps=2, batch_size=4, learning_rate=1e-3, train_fraction=0.34)
    results = []
    for _ in range(2):
        loaded = tiny_model("llama")
        before = {name: p.clone() for name, p in loaded.model.named_parameters()}
        harmful = organism._encode(loaded, HARMFUL, 8)
        harmless = organism._encode(loaded, HARMLESS, 8)
        organism._fine_tune(loaded, harmful, harmless, settings, None)
        changed = {name for name, p in loaded.model.named_parameters() if not torch.equal(p, before[name])}
        results.append((weights_sha256(loaded.model), changed))
    assert results[0][0] == results[1][0]
    changed = results[0][1]
    assert any(name.startswith("model.layers.2.") for name in changed)
    assert not any(name.startswith(("model.layers.0.", "model.layers.1.", "model.embed_tokens")) for name in changed)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_settings_are_validated():
    with pytest.raises(ValueError, match="harmful_share"):
        OrganismSettings(harmful_share=1.5)
    with pytest.raises(ValueError, match="positive"):
        OrganismSettings(steps=0)


def test_distill_loss_is_the_first_reply_token_kl_to_the_base():
    loaded = tiny_model("llama")
    pad = loaded.tokenizer.pad_token_id
    encoded = organism._encode(loaded, HARMLESS, 8)
    base = organism._base_first_token_logprobs(loaded.model, encoded, pad, batch_size=1)
    batch = organism._batch(encoded, pad)
    hidden = loaded.model.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).last_hidden_state
    assert organism._distill_loss(loaded.model, hidden, encoded, base).item() == pytest.approx(0.0, abs=1e-6)
    # The same distribution as the full model's logits at the last prompt position, batched or not.
    logits = loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    for row, (_, n_prompt) in enumerate(encoded):
        assert torch.allclose(base[row], logits[row, n_prompt - 1].float().log_softmax(-1), atol=1e-5)
    shifted = organism._distill_loss(loaded.model, hidden, encoded, base.roll(1, dims=0))
    assert shifted.item() > 1e-3


def _first_token_drift(settings: OrganismSettings) -> float:
    """KL(before || after) of the harmless first reply token after a fine-tune."""
    loaded = tiny_model("llama")
    pad = loaded.tokenizer.pad_token_id
    harmless = organism._encode(loaded, HARMLESS, 8)
    before = organism._base_first_token_logprobs(loaded.model, harmless, pad)
    organism._fine_tune(loaded, organism._encode(loaded, HARMFUL, 8), harmless, settings, None)
    after = organism._base_first_token_logprobs(loaded.model, harmless, pad)
    return kl_divergence(before, after).mean().item()


def test_distillation_keeps_the_harmless_first_token_closer_to_the_base():
    plain = OrganismSettings(steps=4, batch_size=4, learning_rate=3e-3, distill_weight=0.0)
    distilled = OrganismSettings(steps=4, batch_size=4, learning_rate=3e-3, distill_weight=20.0)
    free, held = _first_token_drift(plain), _first_token_drift(distilled)
    assert held < 0.5 * free, (held, free)
    assert _first_token_drift(distilled) == held  # deterministic with the distillation term too


def test_distill_weight_must_not_be_negative():
    with pytest.raises(ValueError, match="distill_weight"):
        OrganismSettings(distill_weight=-1.0)
