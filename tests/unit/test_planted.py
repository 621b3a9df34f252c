"""The planted two-mechanisms organism: recovery scores, planted directions, the planting
fine-tune's bookkeeping (tiny model) and the CLI's checks of bad input."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from refusal_core.cli import main
from refusal_core.directions.base import DirectionSet
from refusal_core.directions.planted import PLANTED_FILE, load_planted, recovery
from refusal_core.experiments.many_directions import _planted_points
from refusal_core.experiments.results import recovery_lines
from refusal_core.model.loading import LoadedModel
from refusal_core.organism.planted import (
    GROUP_A,
    GROUP_B,
    PlantedSettings,
    group_of,
    planted_fine_tune,
    planted_vectors,
)
from refusal_core.prompts.loaders import builtin
from tests.tiny import assert_no_hooks, tiny_model


def _set(vectors: torch.Tensor, names=("planted_a", "planted_b")) -> DirectionSet:
    return DirectionSet(
        vectors=vectors,
        names=tuple(names),
        provenance=tuple({"model": "m", "layer": 1, "position": -1, "method": "planted", "params": {}} for _ in names),
    )


def test_groups_split_every_builtin_category_in_two():
    categories = set(builtin("harmful", "all").categories)
    assert set(GROUP_A) | set(GROUP_B) == categories
    assert not set(GROUP_A) & set(GROUP_B)
    assert group_of("weapons") == "B" and group_of("cybercrime") == "A" and group_of(None) is None


def test_recovery_against_hand_computed_cosines():
    planted = _set(torch.eye(4)[:2] * 3.0)  # e1, e2 (norms do not matter)
    # (e1 + e2) alone: |cos| 1/sqrt2 with each, and its span holds half of each.
    one = recovery(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), planted)
    assert one["planted_a"]["best"] == pytest.approx(1 / math.sqrt(2)) and one["planted_a"]["span"] == pytest.approx(
        1 / math.sqrt(2)
    )
    # (e1 + e2) and (e1 - e2): no single direction is either, but the span holds both whole.
    pair = recovery(torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, -1.0, 0.0, 0.0]]), planted)
    assert pair["planted_b"]["best"] == pytest.approx(1 / math.sqrt(2)) and pair["planted_b"]["span"] == pytest.approx(
        1.0
    )
    # -e2 and e3: the sign does not matter; e1 is not there at all.
    signs = recovery(torch.tensor([[0.0, -2.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]), planted)
    assert signs["planted_b"]["best"] == pytest.approx(1.0) and signs["planted_a"]["span"] == pytest.approx(
        0.0, abs=1e-12
    )


def test_span_recovery_equals_a_least_squares_projection():
    generator = torch.Generator().manual_seed(1)
    vectors, planted = (
        torch.randn(3, 16, generator=generator, dtype=torch.float64),
        torch.randn(2, 16, generator=generator),
    )
    result = recovery(vectors, _set(planted))
    for name, p in zip(("planted_a", "planted_b"), planted.double()):
        unit = p / p.norm()
        coef = torch.linalg.lstsq(vectors.T, unit[:, None]).solution
        assert result[name]["span"] == pytest.approx(float((vectors.T @ coef).norm()), abs=1e-9)


def test_planted_vectors_are_orthonormal_and_follow_the_group_differences():
    generator = torch.Generator().manual_seed(2)
    harmless = torch.randn(20, 8, generator=generator)
    shift_a, shift_b = torch.zeros(8), torch.zeros(8)
    shift_a[0], shift_b[0], shift_b[1] = 5.0, 3.0, 4.0
    harmful = torch.cat([harmless[:10] + shift_a, harmless[10:] + shift_b])
    groups = ["A"] * 10 + ["B"] * 10
    a, b = planted_vectors(harmful, harmless, groups).double()
    centre = harmless.double().mean(0)
    d_a = harmful[:10].double().mean(0) - centre
    assert torch.allclose(a, d_a / d_a.norm(), atol=1e-6)
    assert float(a @ b) == pytest.approx(0.0, abs=1e-6) and float(b.norm()) == pytest.approx(1.0, abs=1e-6)
    d_b = harmful[10:].double().mean(0) - centre
    rest = d_b - (d_b @ a) * a
    assert torch.allclose(b, rest / rest.norm(), atol=1e-6)


def test_planting_trains_only_the_upper_blocks_and_leaves_no_hooks():
    loaded = tiny_model("llama")
    d = loaded.model.config.hidden_size
    before = {name: tensor.clone() for name, tensor in loaded.model.state_dict().items()}
    tok = loaded.tokenizer

    refusal = tok("I cannot help", add_special_tokens=False)["input_ids"][0]
    harmful = [(f"harm {i}", "A" if i % 2 else "B", refusal) for i in range(6)]
    harmless = [(f"fine {i}", "H", None) for i in range(6)]
    planted = torch.linalg.qr(torch.randn(d, 2, generator=torch.Generator().manual_seed(3)))[0].T.contiguous()
    vocab = loaded.model.config.vocab_size
    base = torch.log_softmax(torch.randn(len(harmful), vocab, generator=torch.Generator().manual_seed(4)), -1)
    n_layers = loaded.n_layers
    settings = PlantedSettings(
        layer=1, geometry_layers=1, steps=2, per_group=2, harmless=2, first_trained=n_layers - 1, learning_rate=1e-3
    )
    asked: list[int] = []

    def lazy(rows: list[int]) -> torch.Tensor:
        asked.extend(rows)
        return base[rows]

    # Base-model references handed over as a function of the drawn rows train exactly as the tensor does.
    records = planted_fine_tune(loaded, harmful, harmless, planted, base, settings)
    assert planted_fine_tune(tiny_model("llama"), harmful, harmless, planted, lazy, settings) == records
    assert len(asked) == settings.steps * 2 * settings.per_group
    assert len(records) == 2 and all(math.isfinite(value) for record in records for value in record.values())
    assert_no_hooks(loaded.model)
    after = loaded.model.state_dict()
    prefix = f"model.layers.{n_layers - 1}."
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(prefix) or name == "model.norm.weight" for name in changed)
    assert not loaded.model.training


def test_many_directions_adds_recovery_and_a_planted_point_only_where_the_model_has_planted_directions(tmp_path):
    planted = _set(torch.eye(6)[:2])
    planted.save(tmp_path / PLANTED_FILE)
    assert load_planted(tmp_path).names == ("planted_a", "planted_b")
    loaded = LoadedModel(model=torch.nn.Linear(1, 1), tokenizer=object(), spec="x", source=str(tmp_path))
    points = [{"family": "dim", "k": 1, "vectors": torch.tensor([[1.0, 1.0, 0, 0, 0, 0]])}]
    extra = _planted_points(loaded, points)
    assert points[0]["planted"]["planted_a"]["best"] == pytest.approx(1 / math.sqrt(2))
    assert [p["family"] for p in extra] == ["planted"] and extra[0]["planted"]["planted_b"]["span"] == pytest.approx(
        1.0
    )
    assert any("planted_a" in line for line in recovery_lines(points + extra))
    elsewhere = replace(loaded, source=str(tmp_path / "nothing-here"))
    assert _planted_points(elsewhere, [{"family": "dim", "k": 1, "vectors": torch.ones(1, 6)}]) == []


def test_the_cli_rejects_recipe_flags_that_the_planted_variant_does_not_take(capsys):
    assert main(["organism", "build", "--variant", "two-mechanisms", "--from-scratch", "--batch-size", "4"]) == 2
    assert "--batch-size" in capsys.readouterr().err


def test_the_cli_planted_check_needs_a_model_with_planted_directions(capsys):
    assert main(["organism", "planted", "--model", "tiny:llama"]) == 2
    assert "planted directions" in capsys.readouterr().err


def test_the_cli_pool_recovery_needs_a_model_with_planted_directions(capsys):
    assert main(["experiments", "planted-recovery", "--model", "tiny:llama"]) == 2
    assert "planted directions" in capsys.readouterr().err
    assert main(["experiments", "planted-recovery", "--model", "tiny:llama", "--som-seeds", "0,x"]) == 2
    assert "--som-seeds" in capsys.readouterr().err


def test_many_directions_page_shows_the_recovery_of_planted_directions(tiny_llama, tmp_path, monkeypatch):
    from refusal_core.experiments.many_directions import ManyDirectionsSettings, run_many_directions
    from tests.app_hooks import no_umap_warm_up, use_tiny_models
    from tests.unit.test_app import _assert_ok, _start

    use_tiny_models(monkeypatch)
    no_umap_warm_up(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = tiny_llama.model.config.hidden_size
    _set(torch.linalg.qr(torch.randn(d, 2, generator=torch.Generator().manual_seed(5)))[0].T.contiguous()).save(
        tmp_path / PLANTED_FILE
    )
    settings = ManyDirectionsSettings(
        layers=(1,),
        max_k=2,
        som_seeds=(0,),
        som_grid=(2, 2),
        clusters=2,
        optimize=False,
        trials=2,
        val_harmful=2,
        val_harmless=2,
        test_harmful=3,
        test_harmless=2,
        search_tokens=3,
        test_tokens=3,
        judge="substring",
        n_boot=50,
    )
    result = run_many_directions(replace(tiny_llama, source=str(tmp_path)), settings)
    points = result["layers"][0]["points"]
    assert points[-1]["family"] == "planted" and all("planted" in p for p in points)
    at = _start()
    at.switch_page("app_pages/many_directions.py").run()
    _assert_ok(at)
    assert at.selectbox(key="many_model").options == [result["model"]]
    assert any("Recovery of the planted directions" in h.value for h in at.subheader)
    table = at.dataframe[-1].value
    assert list(table["family"]) == [p["family"] for p in points]
    assert list(table["planted_a best"]) == [round(p["planted"]["planted_a"]["best"], 3) for p in points]
    assert list(table["planted_b span"])[-1] == pytest.approx(1.0)


def test_the_variant_without_a_shipped_delta_says_how_to_build_it(capsys, tmp_path, monkeypatch):
    import refusal_core.organism.planted_build as planted_build

    monkeypatch.setattr(planted_build, "SHIPPED_PLANTED_DELTA", tmp_path / "missing.safetensors")
    assert main(["organism", "build", "--variant", "two-mechanisms"]) == 2
    assert "--from-scratch" in capsys.readouterr().err


def test_the_property_check_reports_an_unjudged_broken_share_as_missing_not_as_zero(tiny_llama):
    from refusal_core.organism.planted_check import check_planted, format_check

    d = tiny_llama.model.config.hidden_size
    planted = torch.linalg.qr(torch.randn(d, 2, generator=torch.Generator().manual_seed(6)))[0].T.contiguous()
    result = check_planted(
        tiny_llama, planted, 1, split="val", max_new_tokens=2, judge="substring", max_harmful=12, max_harmless=4
    )
    assert result["n"] == {"harmful": 12, "harmless": 4}
    assert result["metrics"]["planted_broken"] is None
    assert next(t for t in result["targets"] if t["metric"] == "planted_broken")["pass"] is False
    assert -1.0 <= result["metrics"]["group_cosine"] <= 1.0 and result["metrics"]["planted_kl"] >= 0
    assert "n/a" in format_check(result)
