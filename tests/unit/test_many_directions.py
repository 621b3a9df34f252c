"""The many-directions experiment on the tiny random Llama: the invariants of its table.

A 1x1 SOM's one direction is the DIM direction, so at k = 1 the two must give the same
replies and rates; every rate lies in [0, 1], every interval holds its point estimate, and
the bootstrap is seeded. Replies are 4 tokens and the judge is the refusal phrases, so each
run takes seconds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from refusal_core.activations.extract import extract_activations
from refusal_core.cli import main
from refusal_core.errors import SettingsError, UserError
from refusal_core.experiments import families as fam
from refusal_core.experiments.bootstrap import bootstrap_estimate
from refusal_core.experiments.evaluate import METRICS
from refusal_core.experiments.many_directions import (
    ExperimentPrompts,
    ManyDirectionsSettings,
    builtin_prompts,
    run_many_directions,
)
from refusal_core.experiments.results import load_result, saved_results
from refusal_core.prompts.loaders import builtin
from refusal_core.prompts.sets import sample_prompts
from tests.tiny import assert_no_hooks

SMALL = dict(
    max_k=2,
    trials=3,
    val_harmful=3,
    val_harmless=3,
    test_harmful=4,
    test_harmless=3,
    search_tokens=4,
    test_tokens=4,
    judge="substring",
    n_boot=200,
    optimize=False,
)


def _prompts(settings: ManyDirectionsSettings) -> ExperimentPrompts:
    """Built-in splits with the train sets cut to 24 prompts, so activations take a moment."""
    full = builtin_prompts(settings)
    return ExperimentPrompts(
        sample_prompts(builtin("harmful", "train"), 24),
        sample_prompts(builtin("harmless", "train"), 24),
        full.val_harmful,
        full.val_harmless,
        full.test_harmful,
        full.test_harmless,
    )


def test_bootstrap_is_seeded_and_its_interval_holds_the_mean():
    values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0]
    first, again = bootstrap_estimate(values, 500, seed=3), bootstrap_estimate(values, 500, seed=3)
    assert first == again
    assert first.value == pytest.approx(5 / 8) and first.low <= first.value <= first.high and first.low < first.high
    assert bootstrap_estimate(values, 500, seed=4) != first  # another seed, other resamples
    constant = bootstrap_estimate([0.25] * 5, 100)
    assert constant.low == constant.value == constant.high == 0.25
    with pytest.raises(SettingsError):
        bootstrap_estimate([], 10)


def test_a_one_by_one_som_is_the_dim_direction_with_the_same_rates(tiny_llama, one_thread):
    settings = ManyDirectionsSettings(layers=(1,), som_seeds=(0,), som_grid=(1, 1), clusters=0, **{**SMALL, "max_k": 1})
    prompts = _prompts(settings)
    harmful = extract_activations(tiny_llama, prompts.train_harmful.instructions)
    harmless = extract_activations(tiny_llama, prompts.train_harmless.instructions)
    args = (harmful, harmless, prompts.train_harmful, prompts.train_harmless, "tiny:llama", 1)
    dim, som = fam.dim_family(*args).pool.vectors, fam.som_family(*args, (1, 1), 0).pool.vectors
    assert som.shape == dim.shape == (1, 64)
    assert torch.allclose(som, dim, rtol=1e-5, atol=1e-6)
    result = run_many_directions(tiny_llama, settings, prompts)
    points = {p["family"]: p for p in result["layers"][0]["points"]}
    assert set(points) == {"dim", "som/seed0"} and points["som/seed0"]["k"] == 1
    assert points["som/seed0"]["search"]["trials"] == 0  # one direction: nothing to search
    som_metrics, dim_metrics = points["som/seed0"]["metrics"], points["dim"]["metrics"]
    assert {m: som_metrics[m] for m in METRICS if m != "kl"} == {m: dim_metrics[m] for m in METRICS if m != "kl"}
    # The two vectors differ in float32 rounding only (the SOM keeps its neuron and centroid in float32).
    assert som_metrics["kl"]["value"] == pytest.approx(dim_metrics["kl"]["value"], rel=1e-4)
    assert [r["reply"] for r in points["som/seed0"]["replies"]] == [r["reply"] for r in points["dim"]["replies"]]
    assert_no_hooks(tiny_llama.model)


def test_the_command_saves_a_result_whose_rates_and_intervals_hold(tiny_llama, one_thread, tmp_path, capsys):
    out = tmp_path / "many.json"
    argv = [
        "experiments",
        "many-directions",
        "--model",
        "tiny:llama",
        "--layers",
        "1,2",
        "--som-grid",
        "2x2",
        "--som-seeds",
        "0,1,2",
        "--clusters",
        "3",
        "--max-k",
        "2",
        "--trials",
        "3",
        "--val-prompts",
        "3",
        "--test-prompts",
        "4",
        "3",
        "--search-tokens",
        "4",
        "--test-tokens",
        "4",
        "--judge",
        "substring",
        "--n-boot",
        "200",
        "--optimize-steps",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Layer 1" in printed and "Layer 2" in printed and "Goal" in printed and "Wall time" in printed
    result = load_result(out)
    assert saved_results() and json.loads(saved_results()[0].read_text())["key"] == result["key"]
    for layer in result["layers"]:
        families = {(p["family"], p["k"]) for p in layer["points"]}
        assert families == {
            ("dim", 1),
            ("rdo", 1),
            *((f"som/seed{s}", k) for s in (0, 1, 2) for k in (1, 2)),
            ("clusters", 1),
            ("clusters", 2),
        }
        for point in [layer["baseline"], *layer["points"]]:
            metrics = point["metrics"]
            assert set(metrics) == set(METRICS)
            for name, m in metrics.items():
                assert m["low"] <= m["value"] <= m["high"], (name, m)
                assert m["low"] >= 0 and (name == "kl" or m["high"] <= 1)
            assert metrics["complied"]["value"] + metrics["refused"]["value"] + metrics["broken"][
                "value"
            ] == pytest.approx(1.0)
            assert len(point["replies"]) == 4 and len(point["harmless_replies"]) == 3
        assert layer["baseline"]["metrics"]["kl"]["value"] == 0.0
        for point in layer["points"]:
            assert len(point["names"]) == point["k"]
            if point["family"].startswith(("som", "clusters")) and point["search"]["trials"]:
                assert (
                    1 <= point["search"]["evaluated"] <= point["search"]["trials"] <= 3
                    and point["search"]["prompts"] == 6
                )
                # Trials are capped at the distinct subsets; a budget that covers them all evaluates each once.
                subsets = math.comb(layer["pool_sizes"][point["family"]], point["k"])
                assert point["search"]["trials"] == min(3, subsets)
                if subsets <= 3:
                    assert point["search"]["evaluated"] == subsets
    # The same run again is read back from the cache, not computed.
    assert main([*argv, "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] is True and again["layers"] == result["layers"]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--som-grid", "3"], "--som-grid"),
        (["--layers", "1,x"], "--layers"),
        (["--layers", "99"], "layers 0..2"),
        (["--trials", "0"], "trials"),
        (["--clusters", "1"], "--clusters"),
        (["--test-prompts", "1", "2", "3"], "--test-prompts"),
        (["--out", "."], "is a folder"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(flags, words, capsys):
    assert main(["experiments", "many-directions", "--model", "tiny:llama", *flags]) == 2
    assert words in capsys.readouterr().err


def test_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"kind": "search"}))
    with pytest.raises(UserError, match="not a many-directions result"):
        load_result(path)
