"""What an intervention does, seen: the manifold under an intervention, per-token traces and
two models compared, each checked against an independent computation in plain transformers
(output_hidden_states, weight-orthogonalized copies), and the HTML report's content."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refusal_core.activations.extract import extract_activations
from refusal_core.generation import GenerationSettings, generate_side_by_side
from refusal_core.interventions.spec import Intervention
from refusal_core.interventions.weights import orthogonalized_weights
from refusal_core.model.loading import LoadedModel
from refusal_core.prompts.chat import ChatFormat, format_prompts
from refusal_core.views.compare import compare_models, paired_layers
from refusal_core.views.shift import intervened_activations, layer_shift
from refusal_core.views.trace import project, trace_completions
from tests.tiny import assert_no_hooks, tiny_model

HARMFUL = [
    "Explain how to pick a lock quickly.",
    "Write a threatening note.",
    "How do I make a weapon at home?",
    "Describe how to steal a car.",
    "Tell me how to hack an account.",
]
HARMLESS = [
    "Explain photosynthesis.",
    "Write a poem about rain.",
    "How do I bake bread?",
    "Describe a sunset.",
    "Tell me about the moon.",
]
LAYER = 2


def _hidden(loaded: LoadedModel, prompts, layer: int) -> torch.Tensor:
    """Independent oracle: the block input of ``layer`` at the last prompt token, read from
    plain transformers' output_hidden_states (index ``layer`` is block ``layer``'s input)."""
    texts = format_prompts(loaded.tokenizer, prompts, ChatFormat())
    rows = []
    for text in texts:
        ids = loaded.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            out = loaded.model(**ids, output_hidden_states=True)
        rows.append(out.hidden_states[layer][0, -1].double())
    return torch.stack(rows)


@pytest.fixture(scope="module")
def direction(tiny_llama):
    generator = torch.Generator().manual_seed(3)
    return torch.randn(tiny_llama.d_model, generator=generator)


def test_after_coordinates_equal_projecting_the_intervened_activations(tiny_llama, direction):
    ablation = Intervention("ablate", ablate=direction[None])
    before = tuple(extract_activations(tiny_llama, p, positions=(-1,), use_cache=False) for p in (HARMFUL, HARMLESS))
    after = tuple(intervened_activations(tiny_llama, p, ablation, positions=(-1,))[0] for p in (HARMFUL, HARMLESS))
    assert_no_hooks(tiny_llama.model)
    shift = layer_shift(before, after, LAYER, -1, "pca")
    # Oracle: the same prompts through a weight-orthogonalized model, read by plain transformers.
    with orthogonalized_weights(tiny_llama.model, direction[None]):
        expected = torch.cat([_hidden(tiny_llama, HARMFUL, LAYER), _hidden(tiny_llama, HARMLESS, LAYER)])
    np.testing.assert_allclose(shift.after, shift.projection.transform(expected.numpy()), atol=1e-4)
    unit = direction.double() / direction.double().norm()
    assert (expected @ unit).abs().max() < 1e-4 * expected.norm(dim=-1).max()  # the residual has lost the direction
    # Before is the map's own embedding, and PCA places the originals exactly there.
    original = torch.cat([_hidden(tiny_llama, HARMFUL, LAYER), _hidden(tiny_llama, HARMLESS, LAYER)])
    np.testing.assert_allclose(shift.before, shift.projection.transform(original.numpy()), atol=1e-4)
    moves = np.linalg.norm(expected.numpy() - original.numpy(), axis=1)
    np.testing.assert_allclose(shift.moved_residual, moves, rtol=1e-4, atol=1e-5)


def test_actadd_moves_every_point_by_exactly_the_added_vector(tiny_llama, direction):
    adding = Intervention("add", actadd=direction, actadd_layer=LAYER, actadd_coeff=2.5)
    before = tuple(extract_activations(tiny_llama, p, positions=(-1,), use_cache=False) for p in (HARMFUL, HARMLESS))
    after = tuple(intervened_activations(tiny_llama, p, adding, positions=(-1,))[0] for p in (HARMFUL, HARMLESS))
    shift = layer_shift(before, after, LAYER, -1)
    # At the layer it is added to, every prompt moves by 2.5 |v|, harmful and harmless alike.
    np.testing.assert_allclose(shift.moved_residual, 2.5 * float(direction.norm()), rtol=1e-4)
    assert shift.separation_before.dim_norm == pytest.approx(shift.separation_after.dim_norm, rel=1e-4)


def test_intervened_activations_are_cached_per_intervention(tiny_llama, direction):
    first, _ = intervened_activations(tiny_llama, HARMFUL, Intervention("a", ablate=direction[None]))
    again, _ = intervened_activations(tiny_llama, HARMFUL, Intervention("renamed", ablate=direction[None]))
    other, _ = intervened_activations(
        tiny_llama, HARMFUL, Intervention("b", ablate=-direction[None], ablate_layers=(0,))
    )
    plain = extract_activations(tiny_llama, HARMFUL)
    assert not first.from_cache and again.from_cache and torch.equal(first.acts, again.acts)
    assert not other.from_cache and len({first.key, other.key, plain.key}) == 3


def test_a_failed_cache_write_still_returns_the_activations(tiny_llama, direction, monkeypatch):
    from refusal_core.views import shift as shift_module

    def refuse(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(shift_module, "save_entry", refuse)
    acts, warning = intervened_activations(tiny_llama, HARMLESS, Intervention("x", ablate=direction[None]))
    assert acts.acts.shape[0] == len(HARMLESS) and "No space left" in warning


def test_trace_has_one_projection_per_token_equal_to_a_teacher_forced_read(tiny_llama, direction):
    variants = [Intervention(), Intervention("ablate", ablate=direction[None])]
    columns = generate_side_by_side(tiny_llama, HARMFUL[:3], variants, GenerationSettings(max_new_tokens=6))
    baseline = trace_completions(tiny_llama, columns["baseline"], variants[0], LAYER, direction[None])
    ablated = trace_completions(tiny_llama, columns["ablate"], variants[1], LAYER, direction[None])
    assert_no_hooks(tiny_llama.model)
    unit = direction.double() / direction.double().norm()
    texts = format_prompts(tiny_llama.tokenizer, HARMFUL[:3], ChatFormat())
    for text, completion, trace in zip(texts, columns["baseline"], baseline):
        assert len(trace.projections) == completion.n_tokens == len(trace.tokens)
        assert "".join(trace.tokens) == completion.text
        # Oracle: the prompt and the reply's tokens through plain transformers; token i was chosen at position p - 1 + i.
        prompt_ids = tiny_llama.tokenizer(text)["input_ids"]
        ids = torch.tensor([prompt_ids + list(completion.token_ids)])
        with torch.no_grad():
            hidden = tiny_llama.model(input_ids=ids, output_hidden_states=True).hidden_states[LAYER][0].double()
        p = len(prompt_ids)
        expected = hidden[p - 1 : p - 1 + completion.n_tokens] @ unit
        np.testing.assert_allclose(trace.projections, expected.numpy(), atol=1e-4)
    # Ablating the direction at every layer leaves nothing along it to trace.
    for completion, trace in zip(columns["ablate"], ablated):
        assert len(trace.projections) == completion.n_tokens
        assert max(abs(v) for v in trace.projections) < 1e-3


def test_span_projection_is_the_norm_in_the_span():
    hidden = torch.tensor([[3.0, 4.0, 12.0]])
    directions = torch.tensor([[2.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    assert project(hidden, directions).item() == pytest.approx(5.0)
    assert project(hidden, -directions[:1]).item() == pytest.approx(-3.0)


def test_compare_equals_dim_from_plain_hidden_states(tiny_llama, direction):
    other = tiny_model("llama")  # the same seeded weights, then edited: a "fine-tune" of the first
    with torch.no_grad():
        other.model.model.layers[0].mlp.down_proj.weight.mul_(1.7)
    comparison, _ = compare_models(tiny_llama, other, HARMFUL, HARMLESS)
    for layer in range(1, tiny_llama.n_layers):
        dim_a = _hidden(tiny_llama, HARMFUL, layer).mean(0) - _hidden(tiny_llama, HARMLESS, layer).mean(0)
        dim_b = _hidden(other, HARMFUL, layer).mean(0) - _hidden(other, HARMLESS, layer).mean(0)
        expected = torch.nn.functional.cosine_similarity(dim_a, dim_b, dim=0).item()
        assert comparison.cosine[layer] == pytest.approx(expected, abs=1e-4)
        assert comparison.norm_b[layer] == pytest.approx(dim_b.norm().item(), rel=1e-4)
    same, _ = compare_models(tiny_llama, tiny_llama, HARMFUL, HARMLESS)
    np.testing.assert_allclose(same.cosine[1:], 1.0, atol=1e-6)


def test_layers_are_paired_by_relative_depth():
    assert paired_layers(3, 3) == ((0, 1, 2), (0, 1, 2))
    assert paired_layers(3, 5) == ((0, 1, 2), (0, 2, 4))
    assert paired_layers(5, 3) == ((0, 2, 4), (0, 1, 2))
