"""The planting recipe's prefix-shared batches against the plain left-padded full batch."""

from __future__ import annotations

import torch

from refusal_core.interventions.hooks import row_interventions
from refusal_core.interventions.spec import Intervention
from refusal_core.organism.planted_batch import encode, last_states, run_rows
from refusal_core.prompts.chat import ChatFormat, format_prompts
from tests.tiny import assert_no_hooks, tiny_model


def _prompt_batch(tokenizer, instructions) -> dict[str, torch.Tensor]:
    """The oracle: the whole rows, left-padded, so the last column is every row's last prompt token."""
    texts = format_prompts(tokenizer, list(instructions), ChatFormat())
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, tokens in enumerate(ids):
        input_ids[row, width - len(tokens) :] = torch.tensor(tokens)
        mask[row, width - len(tokens) :] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - 1).clamp(min=0)}


TEXTS = ["Say hi.", "Write one long sentence about the weather in spring and summer.", "Name a colour."]


def _directions(d: int, k: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(d, k, generator=torch.Generator().manual_seed(seed)))[0].T.contiguous()


def test_shared_prefix_rows_match_the_full_batch_in_values_and_gradients():
    loaded = tiny_model("llama")
    model, tok = loaded.model, loaded.tokenizer
    d = model.config.hidden_size
    plain, both, one = (
        Intervention(),
        Intervention(ablate=_directions(d, 2, 1)),
        Intervention(ablate=_directions(d, 1, 2)),
    )
    texts = TEXTS + TEXTS
    per_row = [plain, both, one, both, plain, one]
    weight = model.model.layers[-1].mlp.down_proj.weight
    weight.requires_grad_(True)

    batch = encode(tok, texts)
    assert len(batch.prefix) > 0 and batch.tails.shape[1] < _prompt_batch(tok, texts)["input_ids"].shape[1]
    out = run_rows(model, batch, per_row, output_hidden_states=True)
    fast = out.last_hidden_state[:, -1]
    fast.pow(2).sum().backward()
    fast_grad, weight.grad = weight.grad.clone(), None

    with row_interventions(model, per_row):
        full = model.base_model(**_prompt_batch(tok, texts), output_hidden_states=True)
    slow = full.last_hidden_state[:, -1]
    slow.pow(2).sum().backward()

    assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-4)
    for layer in range(len(full.hidden_states)):
        assert torch.allclose(out.hidden_states[layer][:, -1], full.hidden_states[layer][:, -1], atol=1e-4, rtol=1e-4)
    assert torch.allclose(fast_grad, weight.grad, atol=1e-4, rtol=1e-3)
    # The ablated rows really differ from the plain ones (the interventions reached the prefix pass too).
    assert not torch.allclose(fast[1], run_rows(model, encode(tok, [texts[1]])).last_hidden_state[0, -1])
    assert_no_hooks(model)


def test_last_states_read_the_block_input_and_the_first_token_distribution():
    loaded = tiny_model("llama")
    model, tok = loaded.model, loaded.tokenizer
    states, logprobs = last_states(model, tok, TEXTS, layer=1, batch_size=2)
    only_states, none = last_states(model, tok, TEXTS, layer=1, logprobs=False)
    with torch.no_grad():
        full = model(**_prompt_batch(tok, TEXTS), output_hidden_states=True)
    assert torch.allclose(states, full.hidden_states[1][:, -1], atol=1e-4)
    assert torch.allclose(only_states, states, atol=1e-5) and none is None
    assert torch.allclose(logprobs, full.logits[:, -1].float().log_softmax(-1), atol=1e-4)
    assert_no_hooks(model)


def test_left_padded_prompts_give_each_prompt_its_own_last_token_logits():
    loaded = tiny_model("llama")
    texts = ["Say hi.", "Write one long sentence about the weather in spring and summer."]
    batch = _prompt_batch(loaded.tokenizer, texts)
    with torch.no_grad():
        together = loaded.model(**batch).logits[:, -1]
        for row, text in enumerate(texts):
            alone = _prompt_batch(loaded.tokenizer, [text])
            assert torch.allclose(together[row], loaded.model(**alone).logits[0, -1], atol=1e-4)
