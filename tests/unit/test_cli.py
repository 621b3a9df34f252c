"""The command line on a tiny model saved to disk: outputs, JSON, and exit code 2 on bad input."""

from __future__ import annotations

import json

import pytest
import torch

from refusal_core.cli import main
from refusal_core.directions.base import DirectionSet, load_direction_set


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_activations_json_then_cache_hit(model_dir, capsys):
    args = ["activations", "--model", model_dir, "--limit", "6", "--json"]
    code, out, _ = _run(capsys, *args)
    assert code == 0
    first = json.loads(out)
    assert first["harmful"]["prompts"] == 6 and not first["harmful"]["from_cache"]
    assert first["harmful"]["shape"][2] == 4  # 3 blocks' inputs + the last block's output
    code, out, _ = _run(capsys, *args)
    assert json.loads(out)["harmless"]["from_cache"]


def test_dim_generate_and_export_round_trip(model_dir, tmp_path, capsys):
    out_stem = str(tmp_path / "dim")
    code, out, _ = _run(capsys, "directions", "dim", "--model", model_dir, "--limit", "6", "--out", out_stem)
    assert code == 0 and "DIM directions" in out, out
    directions = load_direction_set(out_stem, d_model=64)
    assert "dim/pos-1/layer1" in directions.names
    code, out, _ = _run(
        capsys,
        "generate",
        "--model",
        model_dir,
        "--prompts",
        "builtin:harmful/test",
        "--limit",
        "2",
        "--ablate",
        f"{out_stem}:dim/pos-1/layer1",
        "--actadd",
        f"{out_stem}:dim/pos-1/layer1",
        "--coeff",
        "4",
        "--baseline",
        "--max-new-tokens",
        "3",
        "--judge",
        "substring",
        "--json",
    )
    assert code == 0
    records = _json_lines(out)
    assert records[-1]["summary"].keys() == {"baseline", "ablate(1)", "actadd(L1,+4)"}
    assert sum(1 for r in records if "variant" in r) == 6
    # The substring judge is the phrase judge of old: no broken verdict, and its flags are the phrases'.
    from refusal_core.judges.substring import substring_refused

    rows = [r for r in records if "variant" in r]
    assert all(r["refused"] == substring_refused(r["completion"]) and r["judges"]["broken"] is None for r in rows)
    assert all(summary["broken"] is None for summary in records[-1]["summary"].values())
    code, out, _ = _run(
        capsys,
        "export-model",
        "--model",
        model_dir,
        "--ablate",
        f"{out_stem}:dim/pos-1/layer1",
        "--out",
        str(tmp_path / "exported"),
    )
    assert code == 0 and (tmp_path / "exported" / "config.json").is_file()


def test_bad_inputs_exit_2_with_a_clear_message(model_dir, tmp_path, capsys):
    code, _, err = _run(capsys, "activations", "--model", model_dir, "--harmful", str(tmp_path / "missing.txt"))
    assert code == 2 and "missing.txt" in err
    wide = DirectionSet(torch.ones(1, 32), ("w",), ({"layer": 0},))
    wide.save(tmp_path / "wide")
    code, _, err = _run(capsys, "generate", "--model", model_dir, "--ablate", str(tmp_path / "wide"), "--limit", "1")
    assert code == 2 and "width 32" in err
    code, _, err = _run(
        capsys, "directions", "som", "--model", model_dir, "--layer", "7", "--limit", "4", "--out", str(tmp_path / "s")
    )
    assert code == 2 and "layers 0..2" in err
    code, _, err = _run(capsys, "activations", "--model", str(tmp_path / "nowhere"))
    assert code == 2 and "No model folder at" in err and "nowhere" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    code, _, err = _run(capsys, "generate", "--model", model_dir, "--prompts", str(empty))
    assert code == 2 and "empty" in err.lower()


def test_som_and_cluster_commands(model_dir, tmp_path, capsys):
    code, out, _ = _run(
        capsys,
        "directions",
        "som",
        "--model",
        model_dir,
        "--layer",
        "1",
        "--x",
        "2",
        "--y",
        "2",
        "--iterations",
        "200",
        "--limit",
        "12",
        "--out",
        str(tmp_path / "som"),
        "--json",
    )
    assert code == 0
    payload = json.loads(out)
    assert len(payload["names"]) == 4 and sum(payload["hits"]) == 12
    code, out, _ = _run(
        capsys,
        "directions",
        "cluster",
        "--model",
        model_dir,
        "--layer",
        "1",
        "--k",
        "2",
        "--limit",
        "12",
        "--out",
        str(tmp_path / "clusters"),
        "--json",
    )
    assert code == 0 and json.loads(out)["k"] == 2
    assert len(load_direction_set(tmp_path / "clusters", d_model=64)) == 2


def test_select_chooses_or_names_the_closest_candidate(model_dir, tmp_path, capsys):
    dim = str(tmp_path / "dim")
    assert _run(capsys, "directions", "dim", "--model", model_dir, "--limit", "6", "--out", dim)[0] == 0
    common = ["directions", "select", "--model", model_dir, "--dirs", dim, "--limit", "3", "--json"]
    code, out, _ = _run(
        capsys,
        *common,
        "--out",
        str(tmp_path / "open.json"),
        "--max-kl",
        "1e9",
        "--min-induce=-1e9",
        "--max-layer-fraction",
        "1",
        "--save-direction",
        str(tmp_path / "best"),
    )
    payload = json.loads(out)
    # Raced by default: every finalist (scored on every prompt) passes open filters, and only finalists do.
    assert code == 0 and payload["mode"] == "racing" and "closest" not in payload
    assert payload["n_passed"] == len(payload["finalists"]) < payload["n_candidates"]
    assert payload["saved"]["closest"] is False
    position, layer = payload["chosen"]
    assert load_direction_set(tmp_path / "best", d_model=64).names == (f"dim/pos{position}/layer{layer}",)
    code, out, _ = _run(
        capsys,
        *common,
        "--out",
        str(tmp_path / "strict.json"),
        "--max-kl",
        "0",
        "--min-induce",
        "1e9",
        "--max-layer-fraction",
        "1",
        "--save-direction",
        str(tmp_path / "closest"),
        "--exhaustive",
    )
    payload = json.loads(out)
    assert code == 0 and payload["mode"] == "exhaustive" and payload["chosen"] is None and payload["n_passed"] == 0
    assert payload["closest"]["rule"] == "no filter"  # nothing induces a refusal score of 1e9
    # With nothing chosen, --save-direction keeps the closest candidate and says so.
    closest_name = f"dim/pos{payload['closest']['position']}/layer{payload['closest']['layer']}"
    assert payload["saved"] == {"path": str(tmp_path / "closest"), "name": closest_name, "closest": True}
    assert load_direction_set(tmp_path / "closest", d_model=64).names == (closest_name,)
    assert payload["closest"]["bypass"] == pytest.approx(
        min(v for row in json.loads((tmp_path / "strict.json").read_text())["bypass"] for v in row if v is not None)
    )


def test_optimize_writes_a_learnt_direction_and_names_bad_init(model_dir, tmp_path, capsys, monkeypatch):
    dim = str(tmp_path / "dim")
    assert _run(capsys, "directions", "dim", "--model", model_dir, "--limit", "4", "--out", dim)[0] == 0
    out = str(tmp_path / "rdo")
    code, stdout, _ = _run(
        capsys,
        "directions",
        "optimize",
        "--model",
        model_dir,
        "--init",
        f"{dim}:dim/pos-1/layer1",
        "--limit",
        "3",
        "--steps",
        "2",
        "--out",
        out,
        "--json",
    )
    payload = json.loads(stdout)
    assert code == 0 and payload["name"] == "rdo/dim/pos-1/layer1"
    assert set(payload["final"]) >= {"loss", "refusal_score", "kl", "cosine_to_init"}
    learnt = load_direction_set(tmp_path / "rdo", d_model=64)
    assert learnt.provenance[0]["method"] == "rdo" and learnt.vectors[0].norm().item() == pytest.approx(1.0, abs=1e-5)
    code, _, err = _run(
        capsys, "directions", "optimize", "--model", model_dir, "--init", dim, "--limit", "3", "--out", out
    )
    assert code == 2 and "--init must name one direction" in err
    # Without --init it starts from cache/best (where `select --save-direction` puts it), or says how to make it.
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(capsys, "directions", "optimize", "--model", model_dir, "--limit", "3", "--out", out)
    assert code == 2 and "No --init given" in err and "--save-direction cache/best" in err


def test_generate_json_rows_carry_verdicts_and_the_summary_carries_rates_and_kl(model_dir, tmp_path, capsys):
    """Every row has the panel's ``refused`` and ``broken`` bools and each judge's vote;
    each summary row has refused / complied / broken shares summing to 1 and the harmless KL."""
    stem = str(tmp_path / "dim")
    assert _run(capsys, "directions", "dim", "--model", model_dir, "--limit", "6", "--out", stem)[0] == 0
    code, out, err = _run(
        capsys,
        "generate",
        "--model",
        model_dir,
        "--limit",
        "3",
        "--ablate",
        f"{stem}:dim/pos-1/layer1",
        "--baseline",
        "--max-new-tokens",
        "12",
        "--judge",
        "substring+broken",
        "--kl-limit",
        "4",
        "--json",
    )
    assert code == 0, err
    records = _json_lines(out)
    rows = [r for r in records if "variant" in r]
    assert len(rows) == 6
    for row in rows:
        assert type(row["refused"]) is bool and type(row["broken"]) is bool
        assert row["label"] in ("refused", "complied", "broken")
        assert row["refused"] == (row["label"] == "refused") and row["broken"] == (row["label"] == "broken")
        assert set(row["judges"]) == {"substring", "refusal_score", "semantic", "broken"}
        assert type(row["judges"]["substring"]) is bool and type(row["judges"]["broken"]) is bool
        assert row["judges"]["semantic"] is None  # not on this judge
        assert row["broken"] == row["judges"]["broken"]  # broken wins over the refusal votes
    summary = records[-1]["summary"]
    assert set(summary) == {"baseline", "ablate(1)"} and records[-1]["judge"] == "substring+broken"
    for name, info in summary.items():
        assert info["n"] == 3
        assert info["refused"] + info["complied"] + info["broken"] == pytest.approx(1.0)
        share = sum(r["broken"] for r in rows if r["variant"] == name) / 3
        assert info["broken"] == pytest.approx(share)
    assert summary["baseline"]["kl"] == 0.0 and summary["ablate(1)"]["kl"] > 0.0


def test_judge_choice_is_validated(model_dir, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--model", model_dir, "--judge", "vibes"])
    assert exit_info.value.code == 2 and "vibes" in capsys.readouterr().err
    code, _, err = _run(
        capsys, "generate", "--model", model_dir, "--limit", "1", "--judge", "panel", "--refusal-phrase", "nope"
    )
    assert code == 2 and "substring judge only" in err


def test_every_command_writes_provenance_from_the_one_builder(model_dir, tmp_path, capsys):
    """dim, som, cluster, optimize, select --save-direction and search: the same keys, and the
    same data_hash for the same prompt sets (the directions come from the train splits)."""
    from refusal_core.directions.provenance import PROVENANCE_KEYS, data_hash
    from refusal_core.prompts.loaders import builtin

    common = ["--model", model_dir, "--limit", "4"]
    written = {name: str(tmp_path / name) for name in ("dim", "som", "cluster", "optimize", "best", "searched")}
    commands = [
        ["directions", "dim", *common, "--out", written["dim"]],
        [
            "directions",
            "som",
            *common,
            "--layer",
            "1",
            "--x",
            "2",
            "--y",
            "1",
            "--iterations",
            "50",
            "--out",
            written["som"],
        ],
        ["directions", "cluster", *common, "--layer", "1", "--k", "2", "--out", written["cluster"]],
        [
            "directions",
            "optimize",
            *common,
            "--init",
            f"{written['dim']}:dim/pos-1/layer1",
            "--steps",
            "1",
            "--out",
            written["optimize"],
        ],
        [
            "directions",
            "select",
            *common,
            "--dirs",
            written["dim"],
            "--out",
            str(tmp_path / "scores.json"),
            "--save-direction",
            written["best"],
        ],
        [
            "directions",
            "search",
            *common,
            "--pool",
            written["dim"],
            "--k",
            "1",
            "--trials",
            "2",
            "--objective",
            "score",
            "--storage",
            str(tmp_path / "study.db"),
            "--out",
            written["searched"],
        ],
    ]
    for argv in commands:
        assert _run(capsys, *argv)[0] == 0, argv
    expected = data_hash(builtin("harmful", "train").head(4), builtin("harmless", "train").head(4))
    for name, path in written.items():
        for record in load_direction_set(path, d_model=64).provenance:
            assert set(PROVENANCE_KEYS) <= set(record), (name, record)
            assert record["data_hash"] == expected and record["model"] == model_dir, (name, record)
