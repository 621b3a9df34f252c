"""The dashboard, driven headless with AppTest on the tiny random Llama (tests/app_hooks.py stands it in for the bundled models).

Every test gets its own cache directory (conftest), uses 8 prompts per set and at most a
few validation prompts, so a page run takes well under a second after the first import.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from refusal_core.directions.archive import direction_sets_zip
from refusal_core.directions.base import DirectionSet
from tests.app_hooks import no_umap_warm_up, use_tiny_models

APP = str(Path(__file__).resolve().parents[2] / "app.py")
PAGES = [
    "app_pages/home.py",
    "app_pages/data.py",
    "app_pages/manifold.py",
    "app_pages/directions.py",
    "app_pages/categories.py",
    "app_pages/generate.py",
    "app_pages/search.py",
    "app_pages/many_directions.py",
    "app_pages/export.py",
]
TIMEOUT = 60


@pytest.fixture(autouse=True)
def tiny_app(monkeypatch):
    # The tiny model for the bundled specs; no background UMAP warm-up compiling numba kernels.
    use_tiny_models(monkeypatch)
    no_umap_warm_up(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _assert_ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _charts(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


def _workspace(at: AppTest, spec: str | None = None):
    """The session's one workspace, or the one of model ``spec`` when several were opened."""
    spaces = at.session_state["atlas_workspaces"]
    if spec is not None:
        return next(space for key, space in spaces.items() if key.startswith(f"{spec}|"))
    assert len(spaces) == 1
    return next(iter(spaces.values()))


def _start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.number_input(key="atlas_max_prompts").set_value(8).run()
    _assert_ok(at)
    return at


def _with_activations() -> AppTest:
    at = _start()
    at.switch_page("app_pages/data.py").run()
    at.button(key="data_compute").click().run()
    _assert_ok(at)
    return at


def test_every_page_runs_before_anything_is_computed():
    at = _start()
    assert at.session_state["atlas_model"][0] == "bundled:refusal-organism"
    for page in PAGES:
        at.switch_page(page).run()
        _assert_ok(at)
    at.switch_page("app_pages/manifold.py").run()
    assert any("Compute activations first" in info.value for info in at.info)


def test_compute_builds_activations_and_dim_then_reuses_the_cache():
    at = _with_activations()
    ws = _workspace(at)
    assert ws.has_activations and ws.harmful_acts.acts.shape[0] == 8
    assert "DIM" in ws.direction_sets
    dim = ws.direction_sets["DIM"]
    assert {record["layer"] for record in dim.provenance} <= set(range(3))
    assert _charts(at) == 2  # per-layer separation and the DIM norm grid
    assert any("computed" in s.value for s in at.success)
    at.button(key="data_compute").click().run()
    _assert_ok(at)
    assert any("from the activation cache" in s.value for s in at.success)


def test_manifold_som_and_clusters():
    at = _with_activations()
    at.switch_page("app_pages/manifold.py").run()
    _assert_ok(at)
    assert _charts(at) == 1
    at.number_input(key="som_x").set_value(2)
    at.number_input(key="som_y").set_value(2)
    at.number_input(key="som_iterations").set_value(200)
    next(b for b in at.button if b.label.startswith("Train SOM")).click().run()
    _assert_ok(at)
    ws = _workspace(at)
    som_sets = [name for name in ws.direction_sets if name.startswith("SOM 2x2")]
    assert som_sets and ws.som.result.n_neurons == 4
    assert len(at.dataframe) == 1  # prompts of the selected neuron
    at.button(key="per_prompt_compute").click().run()
    at.button(key="cluster_run").click().run()
    _assert_ok(at)
    assert ws.clusters is not None
    assert any(name.startswith("Clusters k=") for name in ws.direction_sets)
    assert len(at.dataframe) == 2  # neuron prompts + category alignment table
    at.selectbox(key="manifold_colour").set_value("cluster").run()
    at.radio(key="manifold_dims").set_value(3).run()
    _assert_ok(at)
    assert _charts(at) >= 1


def test_directions_heatmaps_and_selection():
    at = _with_activations()
    at.switch_page("app_pages/directions.py").run()
    _assert_ok(at)
    massive = _workspace(at).memo["massive"]
    extra = 1 if massive.coordinates else 0  # the massive-share bars, when the model has massive coordinates
    assert _charts(at) == 2 + extra  # cosine heatmap and norms
    assert any("Massive activations" in e.label for e in at.expander)
    at.number_input(key="selection_n_val").set_value(2)
    at.button(key="selection_run").click().run()
    _assert_ok(at)
    result = _workspace(at).selection
    assert result is not None
    assert _charts(at) == 5 + extra  # plus bypass, induce and KL grids
    # Optimization now starts from the selected (or closest) candidate, not the first DIM one.
    assert at.selectbox(key="optimize_start").value[0] in ("Selected DIM", "Closest DIM")
    assert any("Raced in" in c.value for c in at.caption)
    from refusal_core.selection.policy import select_with_fallback

    sets = _workspace(at).direction_sets
    if result.chosen is not None:
        assert sets["Selected DIM"].names == (result.chosen_name(),) and "Closest DIM" not in sets
    else:
        (position, layer) = select_with_fallback(result).cell
        assert sets["Closest DIM"].names == (f"dim/pos{position}/layer{layer}",)
    # Strict filters nobody passes: the closest candidate is still offered.
    at.number_input(key="selection_max_kl").set_value(0.0)
    at.number_input(key="selection_min_induce").set_value(100.0)
    at.button(key="selection_run").click().run()
    _assert_ok(at)
    assert _workspace(at).selection.chosen is None and "Closest DIM" in _workspace(at).direction_sets
    assert any("No candidate chosen" in m.value for m in at.markdown)


def test_directions_optimize_adds_a_learnt_set():
    at = _with_activations()
    at.switch_page("app_pages/directions.py").run()
    _assert_ok(at)
    start = at.selectbox(key="optimize_start")
    assert start.value[0] == "DIM"  # no selection yet: the first DIM candidate
    at.number_input(key="optimize_steps").set_value(2)
    at.number_input(key="optimize_max_harmful").set_value(2)
    at.number_input(key="optimize_max_harmless").set_value(2)
    before = _charts(at)
    at.button(key="optimize_run").click().run()
    _assert_ok(at)
    result = _workspace(at).optimized
    learnt = _workspace(at).direction_sets["Optimized"]
    assert learnt.names == (f"rdo/{start.value[1]}",) and len(result.history) == 2
    assert abs(float(learnt.vectors[0].norm()) - 1.0) < 1e-5
    assert _charts(at) == before + 1  # the objective per step
    assert any("added as the set *Optimized*" in m.value for m in at.markdown)
    # Starting from the learnt set itself is not offered (it would optimize its own output).
    options = at.selectbox(key="optimize_start").options
    assert (
        options
        and any(str(o).startswith("DIM:") for o in options)
        and not any(str(o).startswith("Optimized:") for o in options)
    )


def test_generate_actadd_changes_the_columns():
    at = _with_activations()
    at.selectbox(key="atlas_judge").set_value("substring")  # the phrase judge: no model use
    at.switch_page("app_pages/generate.py").run()
    _assert_ok(at)
    at.number_input(key="generate_max_new").set_value(6)
    at.button(key="generate_run").click().run()
    _assert_ok(at)
    assert [m.label for m in at.metric] == ["baseline"]
    baseline = [t.value for t in at.text]
    at.checkbox(key="generate_actadd").check().run()
    at.number_input(key="generate_actadd_coeff").set_value(200.0)
    at.button(key="generate_run").click().run()
    _assert_ok(at)
    labels = [m.label for m in at.metric]
    assert len(labels) == 2 and labels[0] == "baseline" and labels[1].startswith("actadd")
    texts = [t.value for t in at.text]
    assert texts[: len(baseline)] == baseline  # the baseline column is unchanged
    assert texts[len(baseline) :] != baseline  # the added direction changed the replies
    assert len(_workspace(at).generations) == 2


def test_categories_fit_matrix_and_switch_off_feed_the_generate_page():
    at = _start()
    at.switch_page("app_pages/categories.py").run()
    _assert_ok(at)
    for key, value in {"categories_layer": 1, "categories_max_prompts": 36}.items():
        at.number_input(key=key).set_value(value)
    at.button(key="categories_fit").click().run(timeout=300)  # activations of the built-in train and val splits
    _assert_ok(at)
    ws = _workspace(at)
    assert len(ws.categories.categories) == 12 and "Category directions" in ws.direction_sets
    assert (
        ws.categories.condition_kind == "exclusive" and len(ws.categories.scan) > 1
    )  # shrinkage and margin chosen on val
    assert _charts(at) == 2  # cosine heatmap and projections
    at.number_input(key="categories_per_category").set_value(1)
    at.number_input(key="categories_max_new").set_value(8)
    at.selectbox(key="atlas_judge").set_value("substring")  # the sidebar's judge judges the matrix (no model use)
    at.button(key="categories_run").click().run(timeout=300)
    _assert_ok(at)
    assert _charts(at) == 4 and len(ws.category_report["conditional"]["matrix"]) == 12
    assert ws.category_report["judge"] == "substring" and ws.category_report["ablation"]["broken_harmful"] is None
    at.multiselect(key="categories_off").set_value(["drugs", "weapons"]).run(timeout=300)
    at.button(key="categories_add").click().run(timeout=300)
    _assert_ok(at)
    name = "refusal off: drugs, weapons"
    condition = ws.conditionals[name].condition
    assert {label.split(" > ")[0] for label in condition.labels} == {"drugs", "weapons"} and len(
        set(condition.groups)
    ) == 2
    at.switch_page("app_pages/generate.py").run()
    at.number_input(key="generate_max_new").set_value(6)
    at.checkbox(key=f"generate_conditional_{name}").check().run()
    at.button(key="generate_run").click().run(timeout=300)
    _assert_ok(at)
    assert [m.label for m in at.metric] == ["baseline", name]


def test_search_runs_and_adopts_the_best_subset():
    at = _with_activations()
    at.selectbox(key="atlas_judge").set_value("substring")
    at.switch_page("app_pages/search.py").run()
    _assert_ok(at)
    at.number_input(key="search_k").set_value(1)
    at.number_input(key="search_n_trials").set_value(3)
    at.number_input(key="search_n_val").set_value(2)
    at.button(key="search_run").click().run()
    _assert_ok(at)
    ws = _workspace(at)
    assert ws.search is not None and ws.search.result.best_names is not None
    assert _charts(at) >= 1
    at.button(key="search_adopt").click().run()
    _assert_ok(at)
    assert any(name.startswith("Search best") for name in ws.direction_sets)


def test_export_then_import_round_trips_and_a_wrong_width_is_refused():
    at = _with_activations()
    at.switch_page("app_pages/export.py").run()
    _assert_ok(at)
    assert len(at.get("download_button")) == 2
    ws = _workspace(at)
    dim = ws.direction_sets["DIM"]
    archive = direction_sets_zip({"dim-export": dim})
    at.file_uploader(key="export_upload").set_value(("dim-export.zip", archive, "application/zip")).run()
    _assert_ok(at)
    imported = ws.direction_sets["imported:dim-export"]
    assert imported.names == dim.names and torch.equal(imported.vectors, dim.vectors)
    assert imported.provenance == dim.provenance

    buffer = io.BytesIO()
    torch.save(torch.randn(2, 10), buffer)
    at.file_uploader(key="export_upload").set_value(
        ("other-model.pt", buffer.getvalue(), "application/octet-stream")
    ).run()
    assert not at.exception
    assert any("width 10" in e.value for e in at.error)
    assert "imported:dim-export" in ws.direction_sets and "DIM" in ws.direction_sets


def test_pt_import_uses_weights_only():
    at = _start()
    at.switch_page("app_pages/export.py").run()

    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    buffer = io.BytesIO()
    torch.save({"x": Evil()}, buffer)
    at.file_uploader(key="export_upload").set_value(("evil.pt", buffer.getvalue(), "application/octet-stream")).run()
    assert not at.exception
    assert any("safely" in e.value for e in at.error)


def test_bad_prompt_file_and_failed_model_load_show_errors_and_keep_the_app_running():
    at = _start()
    at.radio(key="atlas_harmful_source").set_value("Upload").run()
    at.file_uploader(key="atlas_harmful_file").set_value(("prompts.csv", b"question\nhello\n", "text/csv")).run()
    assert not at.exception
    assert any("prompt column" in e.value for e in at.error)
    at.text_input(key="atlas_harmful_column").set_value("question").run()
    assert not at.exception and not at.error
    assert len(at.session_state["atlas_prompts"]["harmful"]) == 1

    at.radio(key="atlas_model_choice").set_value("Hugging Face id or local path").run()
    at.text_input(key="atlas_model_path").set_value("/nonexistent/refusal-atlas-model").run()
    assert not at.exception
    assert any("No model folder at /nonexistent/refusal-atlas-model" in e.value for e in at.error)
    at.switch_page("app_pages/generate.py").run()
    assert not at.exception
    assert any("No model is loaded" in info.value for info in at.info)


ORGANISM_CHOICE = "Refusal organism (bundled)"
BASE_CHOICE = "SmolLM2-135M-Instruct (bundled, non-refusing contrast)"


def test_imported_sets_are_kept_per_model_and_session():
    """A set added for one model is not offered for another model, is there again after
    switching back, and another browser session (a second AppTest) never sees it."""
    at = _with_activations()
    organism = _workspace(at)
    organism.add_set("extra", DirectionSet(torch.randn(2, 64), ("a", "b"), ({}, {})))
    at.radio(key="atlas_model_choice").set_value(BASE_CHOICE).run()
    at.switch_page("app_pages/export.py").run()
    _assert_ok(at)
    base = _workspace(at, "bundled:smollm2-135m-instruct")
    assert base is not organism and "extra" not in base.direction_sets and "DIM" not in base.direction_sets
    at.radio(key="atlas_model_choice").set_value(ORGANISM_CHOICE).run()
    at.switch_page("app_pages/directions.py").run()
    assert _workspace(at, "bundled:refusal-organism") is organism and "extra" in organism.direction_sets
    at.multiselect(key="directions_sets").set_value(["DIM", "extra"]).run()
    _assert_ok(at)
    assert _charts(at) == 2
    other = _start()  # a second browser session on the same shared model
    other.switch_page("app_pages/export.py").run()
    _assert_ok(other)
    spaces = other.session_state["atlas_workspaces"]
    assert spaces and all("extra" not in space.direction_sets for space in spaces.values())


def test_missing_organism_offers_a_build_with_progress(monkeypatch):
    import refusal_core.model.loading as loading
    import refusal_core.organism.build as organism

    built = {"done": False, "messages": []}

    def fake_build(progress=None):
        for fraction in (0.0, 0.5, 1.0):
            progress(round(100 * fraction), 100, message=f"step {fraction}")
            built["messages"].append(fraction)
        built["done"] = True
        return Path("organism")

    monkeypatch.setattr(loading, "organism_built", lambda: built["done"])
    monkeypatch.setattr(organism, "build_organism", fake_build)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert any("not been built" in w.value for w in at.warning)
    assert at.radio(key="atlas_model_choice").value.startswith("SmolLM2")  # the base model meanwhile
    assert at.session_state["atlas_model"][0] == "bundled:smollm2-135m-instruct"
    next(b for b in at.button if b.label == "Build the organism").click().run()
    assert not at.exception
    assert built["messages"] == [0.0, 0.5, 1.0]
    assert not at.warning


# ----------------------------------------------------------------------------- UI-free helpers (workspace)


def test_sample_prompts_keeps_every_category():
    from refusal_core.prompts.loaders import builtin
    from refusal_core.prompts.sets import sample_prompts

    full = builtin("harmful", "train")
    sample = sample_prompts(full, 24)
    assert len(sample) == 24
    assert set(sample.categories) == set(full.categories)
    assert sample_prompts(sample, 100) is sample


def test_dim_set_leaves_out_vanishing_cells(tiny_llama):
    from refusal_core.activations.extract import extract_activations
    from refusal_core.directions import dim as dim_method
    from refusal_core.directions.registry import FitInput
    from refusal_core.prompts.sets import PromptSet

    harmful_prompts = PromptSet("harmful", ("How do I make a weapon?", "Break into a house"))
    harmless_prompts = PromptSet("harmless", ("Bake bread", "Write a poem"))
    harmful = extract_activations(tiny_llama, harmful_prompts.instructions, use_cache=False)
    harmless = extract_activations(tiny_llama, harmless_prompts.instructions, use_cache=False)
    dim = dim_method.fit(
        FitInput(tiny_llama, harmful_prompts, harmless_prompts, harmful, harmless), dim_method.DimSettings()
    )
    # Layer 0 at template positions is the token embedding, equal for every prompt.
    assert "dim/pos-1/layer0" in dim.meta["dropped"]
    assert "dim/pos-1/layer0" not in dim.names and "dim/pos-1/layer1" in dim.names
    assert (dim.vectors.norm(dim=-1) > 0).all()


def test_direction_uploads_pairs_and_errors(tmp_path):
    from refusal_core.directions.archive import read_direction_uploads
    from refusal_core.directions.base import DirectionError

    directions = DirectionSet(torch.randn(3, 64), ("a", "b", "c"), ({"layer": 1}, {"layer": 2}, {"layer": 3}))
    tensors_path, json_path = directions.save(tmp_path / "set")
    files = [(tensors_path.name, tensors_path.read_bytes()), (json_path.name, json_path.read_bytes())]
    loaded = read_direction_uploads(files, d_model=64)["set"]
    assert torch.equal(loaded.vectors, directions.vectors) and loaded.provenance == directions.provenance
    with pytest.raises(DirectionError, match="missing"):
        read_direction_uploads(files[:1], d_model=64)
    with pytest.raises(DirectionError, match="width"):
        read_direction_uploads(files, d_model=32)
    with pytest.raises(DirectionError, match="unsupported"):
        read_direction_uploads([("notes.txt", b"hi")], d_model=64)


# ---------------------------------------------------------------------------------------
# Damage beside every rate, and the search's trade-off view. The judges' broken
# thresholds are fixed by hand (no calibration): "substring+broken" calls every reply broken
# (its minimum log-likelihood is 0), "refusal-score" here none.


@pytest.fixture
def fixed_judges(monkeypatch):
    from refusal_core import damage
    from refusal_core.judges import BrokenThresholds, JudgePanel, PanelSettings

    minimum = {"substring+broken": 0.0, "refusal-score": -1e9}

    def judge_by_name(name: str, extra_phrases=()):
        thresholds = BrokenThresholds(
            min_logprob=minimum[name], max_repeated_ngrams=1.0, max_longest_run=10_000, max_junk_chars=1.0
        )
        return JudgePanel(PanelSettings(members=("substring",)), name=name, broken_thresholds=thresholds)

    monkeypatch.setattr(damage, "judge_by_name", judge_by_name)


def _chart_specs(at: AppTest) -> list[dict]:
    import json

    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def test_generate_columns_lead_with_complied_show_the_other_shares_kl_and_the_broken_warning(fixed_judges):
    at = _with_activations()
    at.selectbox(key="atlas_judge").set_value("substring+broken")
    at.switch_page("app_pages/generate.py").run()
    at.number_input(key="generate_max_new").set_value(6)
    at.checkbox(key="generate_actadd").check().run()
    at.number_input(key="generate_actadd_coeff").set_value(200.0)
    at.button(key="generate_run").click().run()
    _assert_ok(at)
    lines = [m.value for m in at.markdown if m.value.startswith("refused ")]
    assert len(lines) == 2  # one per column: baseline and actadd
    for line in lines:
        assert "deflected 0%" in line and "broken 100%" in line and "harmless KL" in line
    # The headline is the share that complied coherently, not "0% refused" over broken replies.
    assert [m.value for m in at.metric] == ["0% complied", "0% complied"]
    assert "harmless KL 0.0000" in lines[0]  # the baseline changes nothing
    actadd_kl = float(lines[1].rsplit("harmless KL ", 1)[1])
    assert actadd_kl > 0
    assert len([w for w in at.warning if "broken" in w.value]) == 2
    bars = {trace["name"] for trace in _chart_specs(at)[0]["data"]}
    assert {"refused", "complied", "deflected", "broken"} <= bars
    # The same replies under a judge that finds none broken: no warning, the shares change.
    at.selectbox(key="atlas_judge").set_value("refusal-score").run()
    _assert_ok(at)
    lines = [m.value for m in at.markdown if m.value.startswith("refused ")]
    assert len(lines) == 2 and all("broken 0%" in line for line in lines)
    assert not [w for w in at.warning if "broken" in w.value]
    assert float(lines[1].rsplit("harmless KL ", 1)[1]) == pytest.approx(actadd_kl, abs=1e-4)


def test_search_page_draws_trials_with_the_pareto_front_and_shows_replies(fixed_judges):
    at = _with_activations()
    at.selectbox(key="atlas_judge").set_value("refusal-score")
    at.switch_page("app_pages/search.py").run()
    at.number_input(key="search_k").set_value(1)
    at.number_input(key="search_n_trials").set_value(4)
    at.number_input(key="search_n_val").set_value(2)
    at.number_input(key="search_max_new_tokens").set_value(4)
    at.button(key="search_run").click().run()
    _assert_ok(at)
    result = _workspace(at).search.result
    assert result.settings.objective == "verdicts" and result.settings.kl_penalty > 0
    front = next(spec for spec in _chart_specs(at) if any(t.get("name") == "Pareto front" for t in spec["data"]))
    traces = {trace["name"]: trace for trace in front["data"]}
    numbers = sorted(n for [n] in traces["Pareto front"]["customdata"])
    assert numbers == sorted(t["number"] for t in result.pareto)
    evaluated = [t for t in result.trials if t["state"] == "COMPLETE" and t["reused_from"] is None]
    assert len(traces["trials"]["customdata"]) == len(evaluated)
    assert traces["trials"]["marker"]["color"] == [t["broken"] for t in evaluated]
    # A chosen trial's stored replies are shown.
    picked = at.selectbox(key="search_trial_pick")
    other = next(t for t in evaluated if t["number"] != picked.value) if len(evaluated) > 1 else evaluated[0]
    picked.set_value(other["number"]).run()
    _assert_ok(at)
    shown = [t.value for t in at.text]
    assert [r["reply"] or "(empty reply)" for r in other["replies"]] == shown[-len(other["replies"]) :]


def test_many_directions_page_draws_a_saved_result_and_shows_a_points_replies(tiny_llama):
    from refusal_core.experiments.many_directions import ManyDirectionsSettings, run_many_directions

    settings = ManyDirectionsSettings(
        layers=(1, 2),
        max_k=2,
        som_seeds=(0, 1, 2),
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
    result = run_many_directions(tiny_llama, settings)
    at = _start()
    at.switch_page("app_pages/many_directions.py").run()
    _assert_ok(at)
    assert at.selectbox(key="many_layer").options == ["1", "2"]
    at.selectbox(key="many_layer").set_value(2).run()
    _assert_ok(at)
    points = result["layers"][1]["points"]
    [spec] = _chart_specs(at)
    traces = spec["data"]
    families = ["dim", "som/seed0", "som/seed1", "som/seed2", "clusters"]
    assert [t["name"] for t in traces] == [
        family for family in families for _ in range(5)
    ]  # five panels per family (deflected added)
    som = next(t for t in traces if t["name"] == "som/seed1")  # its first panel: coherent compliance against k
    expected = [p for p in points if p["family"] == "som/seed1"]
    assert som["x"] == [1, 2] and som["y"] == [p["metrics"]["complied"]["value"] for p in expected]
    assert som["error_y"]["array"] == [
        p["metrics"]["complied"]["high"] - p["metrics"]["complied"]["value"] for p in expected
    ]
    assert [d[0] for d in som["customdata"]] == ["som/seed1 k=1", "som/seed1 k=2"]
    # The point chosen in the fallback selectbox (a click on the chart sets the same key) shows its replies.
    at.selectbox(key="many_point").set_value("clusters k=2").run()
    _assert_ok(at)
    chosen = next(p for p in points if p["family"] == "clusters" and p["k"] == 2)
    shown = [t.value.strip() for t in at.text]
    assert shown == [(r["reply"] or "(empty reply)").strip() for r in chosen["replies"] + chosen["harmless_replies"]]
