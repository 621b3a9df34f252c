"""The issue's checks on the organism with its DIM direction (position -1, layer 22, from the
train splits, as the reference interventions use): the PEFT adapter reproduces the
orthogonalized model's logits and is at most 2% of the full export; the GGUF written over the
shipped SmolLM2 GGUF loads in transformers, keeps its residual stream free of the direction
(balanced requantization), and, like the adapter and the orthogonalized model, complies on
held-out harmful prompts where the organism refuses (panel judge).

The GGUF is written with its edited tensors in Q8_0: the shipped file's Q4_1 blocks alone
(the organism requantized with no direction removed) already stop the organism refusing on
the test prompts (docs/exports.md, scripts/gguf_organism_table.py), so compliance of a Q4_1
export would not show that the edit works; at Q8_0 the unedited organism still refuses."""

from __future__ import annotations

import copy
import time

import pytest
import torch

pytestmark = pytest.mark.slow

N_PROMPTS = 4
GGUF_EDITED_TYPE = "Q8_0"
# The GGUF keeps under 0.1% of the organism's share along the direction (worst position). On 20
# test prompts (docs/exports.md) Q8_0 with nearest rounding left 0.9% of it, balanced rounding 0.004%.
LEAK_SHARE = 0.001


def _worst_share(model, tokenizer, instructions, unit: torch.Tensor) -> float:
    """The worst |h.u|/|h| over the prompts' residual stream (after the embedding and each block
    but the last, whose output HF returns after the final norm)."""
    worst = 0.0
    for text in instructions:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with torch.no_grad():
            for h in model(ids, output_hidden_states=True).hidden_states[:-1]:
                h = h[0].double()
                worst = max(worst, float(((h @ unit).abs() / h.norm(dim=-1)).max()))
    return worst


def _greedy(model, tokenizer, instruction: str, max_new_tokens: int) -> str:
    """A greedy reply straight from PEFT's model (our generation reads a plain HF model's layout)."""
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_adapter_and_gguf_of_the_organism(tmp_path):
    import peft
    from transformers import AutoModelForCausalLM

    from refusal_core.exports.registry import ExportRequest, get_format
    from refusal_core.generation import GenerationSettings, generate_side_by_side
    from refusal_core.interventions.spec import Intervention
    from refusal_core.interventions.weights import orthogonalized_weights
    from refusal_core.judges import MIN_RATE_TOKENS, make_judge, verdict_rates
    from refusal_core.judges.variants import train_directions
    from refusal_core.model.loading import BUNDLED_ORGANISM, LoadedModel, load_model
    from refusal_core.prompts.chat import ChatFormat
    from refusal_core.prompts.loaders import builtin

    started = time.perf_counter()
    torch.manual_seed(0)
    loaded = load_model(BUNDLED_ORGANISM)
    dim = train_directions(loaded)[0]
    instructions = list(builtin("harmful", "test").instructions)[:N_PROMPTS]
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": instructions[0]}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]

    lora, gguf_format, folder = get_format("lora"), get_format("gguf"), get_format("folder")
    adapter_dir = lora.write(ExportRequest(loaded, dim, tmp_path / "lora", lora.settings()))
    adapter_bytes = sum(p.stat().st_size for p in adapter_dir.rglob("*") if p.is_file())
    full_bytes = folder.estimate_size(loaded, dim, folder.settings())
    assert adapter_bytes <= 0.02 * full_bytes
    with torch.no_grad():
        with orthogonalized_weights(loaded.model, dim):
            expected = loaded.model(ids).logits
        adapted = peft.PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(adapter_dir)).eval()
        assert (adapted(ids).logits - expected).abs().max() < 1e-3  # float32 rounding on logits of size ~30

    gguf_settings = gguf_format.settings(edited_type=GGUF_EDITED_TYPE)
    gguf_dir = gguf_format.write(ExportRequest(loaded, dim, tmp_path / "gguf", gguf_settings))
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file="model.gguf", dtype=torch.float32).eval()
    gguf_loaded = LoadedModel(model=gguf_model, tokenizer=loaded.tokenizer, spec="gguf-export", source=str(gguf_dir))

    settings = GenerationSettings(max_new_tokens=MIN_RATE_TOKENS, batch_size=N_PROMPTS)
    ablate = Intervention.from_directions("dim-ablate", dim)
    columns = generate_side_by_side(loaded, instructions, [Intervention(), ablate], settings, ChatFormat())
    gguf_replies = generate_side_by_side(gguf_loaded, instructions, [Intervention()], settings, ChatFormat())[
        "baseline"
    ]
    adapter_replies = [_greedy(adapted, loaded.tokenizer, text, MIN_RATE_TOKENS) for text in instructions]
    panel = make_judge("panel")

    def rates(texts, intervention):
        replies = [c if isinstance(c, str) else c.text for c in texts]
        return verdict_rates(panel.verdicts(loaded, instructions, replies, intervention=intervention))

    unit = (dim.vectors[0] / dim.vectors[0].norm()).double()
    leak = {
        "organism": _worst_share(loaded.model, loaded.tokenizer, instructions, unit),
        "gguf": _worst_share(gguf_model, loaded.tokenizer, instructions, unit),
    }
    organism = rates(columns["baseline"], Intervention())
    hooks, from_gguf, from_adapter = (
        rates(texts, ablate) for texts in (columns["dim-ablate"], gguf_replies, adapter_replies)
    )
    elapsed = time.perf_counter() - started
    print(
        {
            "organism": organism,
            "hooks": hooks,
            "gguf": from_gguf,
            "adapter": from_adapter,
            "adapter_share": adapter_bytes / full_bytes,
            "leak": leak,
            "seconds": round(elapsed),
        }
    )
    assert organism["refused"] >= 0.75
    assert leak["gguf"] < LEAK_SHARE * leak["organism"]
    for column in (hooks, from_gguf, from_adapter):
        assert column["complied"] >= 0.75 and column["refused"] <= 0.25
