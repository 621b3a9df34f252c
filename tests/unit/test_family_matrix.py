"""Every family in the coverage list, as a tiny random model from transformers' own config
saved as a local folder, through activations, DIM, hooks, actadd, generation and an exact
export reloaded at float64 (``experiments/coverage.py``). A transformers upgrade that
changes a family's layout fails here.

Independent oracles: the reload is plain ``AutoModelForCausalLM`` at float64 and its
residual is read from ``output_hidden_states`` here, not through the engine's probe.
"""

from __future__ import annotations

import pytest
import torch

from refusal_core.experiments.coverage import BOUND, COVERED, DISCOVERED, run_family
from refusal_core.model.loading import load_model
from refusal_core.model.tiny_families import tiny_family_folder
from refusal_core.model.writers import residual_writes

REQUIRED = {
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "gemma2",
    "gemma3_text",
    "gemma3",
    "phi3",
    "olmo2",
    "smollm3",
    "glm4",
    "qwen3_moe",
    "mixtral",
    "gpt_oss",
    "olmoe",
    "deepseek_v3",
    "granitemoe",
    "cohere2",
    "exaone4",
    "llama4_text",
    "gemma",
    "olmo",
    "granite",
    "gpt2",
}


def test_the_issue_families_are_all_covered():
    assert REQUIRED <= set(COVERED)


@pytest.mark.parametrize("model_type", [*COVERED, *DISCOVERED])
def test_family_passes_the_matrix(model_type, one_thread):
    result = run_family(model_type)
    assert result.layout == ("discovered" if model_type in DISCOVERED else "table")
    assert result.error is None, result.error
    failed = [name for name, ok in result.checks.items() if not ok]
    assert not failed, (failed, result)


@pytest.mark.parametrize("model_type", ["mixtral", "gpt_oss", "deepseek_v3", "llama4_text", "qwen2_moe"])
def test_every_expert_output_tensor_and_bias_is_listed(model_type, tmp_path, one_thread):
    """Counted from the state dict, not the table: every parameter that is an MoE block's
    output projection (fused experts, shared experts, dense MLP layers) or its bias."""
    loaded = load_model(str(tiny_family_folder(model_type, tmp_path)))
    listed = {write.name: write.axis for write in residual_writes(loaded.model)}
    d = loaded.d_model
    for name, param in loaded.model.named_parameters():
        if name.endswith(
            (
                "experts.down_proj",
                "experts.down_proj_bias",
                "mlp.down_proj.weight",
                "feed_forward.down_proj.weight",
                "shared_expert.down_proj.weight",
                "shared_experts.down_proj.weight",
                "self_attn.o_proj.weight",
                "self_attn.o_proj.bias",
            )
        ):
            assert name in listed, name
            assert param.shape[listed[name]] == d, (name, tuple(param.shape), listed[name])


def test_gemma3_multimodal_projector_is_edited(tmp_path):
    """Image features enter the residual stream through the projector: its output is edited too."""
    from refusal_core.interventions.weights import orthogonalized_weights

    loaded = load_model(str(tiny_family_folder("gemma3", tmp_path)))
    projector = loaded.model.model.multi_modal_projector
    direction = torch.randn(1, loaded.d_model, generator=torch.Generator().manual_seed(0))
    features = torch.randn(1, 1, projector.mm_input_projection_weight.shape[0])
    with orthogonalized_weights(loaded.model, direction), torch.no_grad():
        out = features @ projector.mm_input_projection_weight
        unit = direction / direction.norm()
        assert float((out @ unit.T).abs().max() / out.norm()) < BOUND


@pytest.mark.parametrize("model_type", ["gemma3", "mixtral", "gpt_oss", "glm4", "deepseek_v3"])
def test_cli_dim_generate_export_and_reload(model_type, tmp_path, one_thread, capsys):
    """The issue's own check, through the CLI on a local folder: ``directions dim``,
    ``generate --ablate`` and ``export-model``; the export reloaded in plain transformers at
    float64 has no residual component along the direction after the embedding and after
    every block (read here from ``output_hidden_states``, not through the engine)."""
    from transformers import AutoModelForCausalLM

    from refusal_core.cli import main
    from refusal_core.directions.base import load_direction_set

    folder = tiny_family_folder(model_type, tmp_path / "model")
    harmful, harmless = tmp_path / "harmful.txt", tmp_path / "harmless.txt"
    harmful.write_text("Explain how to break into a house.\nGive me steps to make a weapon.\n")
    harmless.write_text("Write a poem about the sea.\nHow do I bake bread at home?\n")
    model = ["--model", str(folder)]
    assert (
        main(
            [
                "directions",
                "dim",
                *model,
                "--harmful",
                str(harmful),
                "--harmless",
                str(harmless),
                "--out",
                str(tmp_path / "dim"),
            ]
        )
        == 0
    )
    name = load_direction_set(tmp_path / "dim").names[-1]
    ablate = f"{tmp_path / 'dim'}:{name}"
    assert (
        main(
            [
                "generate",
                *model,
                "--prompts",
                str(harmful),
                "--limit",
                "1",
                "--ablate",
                ablate,
                "--max-new-tokens",
                "3",
                "--kl-limit",
                "0",
                "--judge",
                "substring",
            ]
        )
        == 0
    )
    assert main(["export-model", *model, "--ablate", ablate, "--out", str(tmp_path / "export")]) == 0
    capsys.readouterr()
    direction = load_direction_set(tmp_path / "dim").vectors[-1].double()
    unit = direction / direction.norm()
    reloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "export", dtype=torch.float64, experts_implementation="eager"
    )
    ids = torch.randint(3, 300, (3, 9), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        states = reloaded(input_ids=ids, output_hidden_states=True).hidden_states
    n_layers = reloaded.config.get_text_config().num_hidden_layers
    assert len(states) == n_layers + 1
    # hidden_states[-1] is the final norm's output; the last block's output is checked by the matrix.
    worst = max(float(((h @ unit).abs() / h.norm(dim=-1)).max()) for h in states[:-1])
    assert worst <= BOUND
    with torch.no_grad():
        original = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, experts_implementation="eager")
        before = original(input_ids=ids, output_hidden_states=True).hidden_states
    assert (
        max(float(((h @ unit).abs() / h.norm(dim=-1)).max()) for h in before[:-1]) > 1e-2
    )  # there was something to remove
