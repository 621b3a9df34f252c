"""``manifold``, ``generate --trace``, ``compare`` and ``report`` on a tiny model saved to
disk: their JSON, the report file, and exit code 2 on bad input before any model work."""

from __future__ import annotations

import json
import re

import pytest

from refusal_core.cli import main

DIRECTION = "dim/pos-1/layer1"


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


@pytest.fixture(scope="module")
def dim_stem(model_dir, tmp_path_factory):
    stem = str(tmp_path_factory.mktemp("dirs") / "dim")
    assert main(["directions", "dim", "--model", model_dir, "--limit", "6", "--out", stem]) == 0
    return stem


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_manifold_json_moves_harmful_points_and_reports_separation(model_dir, dim_stem, tmp_path, capsys):
    out = tmp_path / "shift.json"
    code, printed, err = _run(
        capsys,
        "manifold",
        "--model",
        model_dir,
        "--limit",
        "6",
        "--layer",
        "2",
        "--ablate",
        f"{dim_stem}:{DIRECTION}",
        "--all-layers",
        "--out",
        str(out),
        "--json",
    )
    assert code == 0, err
    result = json.loads(printed)
    assert json.loads(out.read_text()) == result
    shift = result["shift"]
    assert shift["layer"] == 2 and shift["n_harmful"] == 6 and len(shift["after"]) == 12 == len(result["prompts"])
    assert set(shift["separation"]["before"]) == {"dim_norm", "probe_accuracy", "cv_probe_accuracy"}
    # Layer 0's last template token is the same embedding for every prompt: nothing to map there.
    assert [layer["layer"] for layer in result["layers"]] == [1, 2]


def test_manifold_actadd_moves_every_prompt_by_the_added_vector(model_dir, dim_stem, capsys):
    from refusal_core.directions.base import load_direction_set

    vector = load_direction_set(dim_stem, d_model=64).select([DIRECTION]).vectors[0]
    code, printed, err = _run(
        capsys,
        "manifold",
        "--model",
        model_dir,
        "--limit",
        "5",
        "--layer",
        "1",
        "--actadd",
        f"{dim_stem}:{DIRECTION}",
        "--coeff",
        "3",
        "--json",
    )
    assert code == 0, err
    moved = json.loads(printed)["shift"]["moved"]
    assert moved["harmful_residual"] == pytest.approx(3 * float(vector.norm()), rel=1e-4)
    assert moved["harmless_residual"] == pytest.approx(3 * float(vector.norm()), rel=1e-4)


def test_generate_trace_rows_carry_one_projection_per_token(model_dir, dim_stem, capsys):
    code, printed, err = _run(
        capsys,
        "generate",
        "--model",
        model_dir,
        "--limit",
        "2",
        "--baseline",
        "--ablate",
        f"{dim_stem}:{DIRECTION}",
        "--max-new-tokens",
        "5",
        "--judge",
        "substring",
        "--kl-limit",
        "0",
        "--trace",
        "2",
        "--json",
    )
    assert code == 0, err
    rows = [json.loads(line) for line in printed.splitlines() if '"variant"' in line]
    assert len(rows) == 4
    for row in rows:
        assert row["trace_layer"] == 2 and len(row["trace"]["projections"]) == row["n_tokens"] == len(
            row["trace"]["tokens"]
        )
    ablated = [row for row in rows if row["variant"] != "baseline"]
    assert all(abs(v) < 1e-3 for row in ablated for v in row["trace"]["projections"])


def test_compare_and_report_from_saved_results(model_dir, dim_stem, tmp_path, capsys):
    compared = tmp_path / "compare.json"
    code, printed, err = _run(
        capsys,
        "compare",
        model_dir,
        model_dir,
        "--limit",
        "6",
        "--score-prompts",
        "2",
        "--out",
        str(compared),
        "--json",
    )
    assert code == 0, err
    comparison = json.loads(printed)["comparison"]
    assert [round(row["cosine"], 6) for row in comparison["layers"][1:]] == [1.0, 1.0]
    assert set(comparison["scores"]) == {"a", "b"} and comparison["scores"]["a"] == comparison["scores"]["b"]
    shift = tmp_path / "shift.json"
    assert (
        main(
            [
                "manifold",
                "--model",
                model_dir,
                "--limit",
                "4",
                "--layer",
                "1",
                "--actadd",
                f"{dim_stem}:{DIRECTION}",
                "--coeff",
                "2",
                "--out",
                str(shift),
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    replies = tmp_path / "replies.jsonl"
    assert (
        main(
            [
                "generate",
                "--model",
                model_dir,
                "--limit",
                "1",
                "--ablate",
                f"{dim_stem}:{DIRECTION}",
                "--baseline",
                "--max-new-tokens",
                "4",
                "--judge",
                "substring",
                "--kl-limit",
                "0",
                "--trace",
                "1",
                "--json",
            ]
        )
        == 0
    )
    replies.write_text(capsys.readouterr().out)
    page = tmp_path / "report.html"
    code, printed, err = _run(capsys, "report", str(shift), str(compared), str(replies), "--out", str(page))
    assert code == 0, err
    text = page.read_text()
    # Self-contained: plotly.js inline, no script or stylesheet fetched from elsewhere.
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=", text)
    # One chart each: the shift (section 0), the cosine and the scores (1), the per-token traces (2).
    assert re.findall(r'<div id="(chart-[\d-]+)"', text) == ["chart-0-0", "chart-1-0", "chart-1-1", "chart-2-0"]
    for needed in ("The manifold under the intervention", "against", "Replies", "Manifest", "packages", "transformers"):
        assert needed in text


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["manifold", "--layer", "1", "--ablate", "DIRS", "--coeff", "nan"], "--coeff nan"),
        (["manifold", "--layer", "1", "--ablate", "DIRS", "--out", "/nonexistent/folder/x.json"], "does not exist"),
        (["manifold", "--layer", "1", "--ablate", "DIRS", "--out", "OUT.txt"], "ending in .json"),
        (["manifold", "--layer", "9", "--ablate", "DIRS"], "--layer 9 is out of range"),
        (["manifold", "--layer", "1"], "Give --ablate"),
        (["generate", "--limit", "1", "--trace", "1", "--kl-limit", "0"], "--trace needs directions"),
        (["generate", "--limit", "1", "--trace", "7", "--ablate", "DIRS"], "--layer 7 is out of range"),
        (["compare", "MODEL", "MODEL", "--score-prompts", "-1"], "--score-prompts"),
        (["report", "missing.json"], "No such result file"),
    ],
)
def test_bad_input_exits_2_with_its_name(argv, needle, model_dir, dim_stem, tmp_path, capsys):
    swap = {"DIRS": f"{dim_stem}:{DIRECTION}", "MODEL": model_dir, "OUT.txt": str(tmp_path / "x.txt")}
    argv = [swap.get(arg, arg) for arg in argv]
    if argv[0] in ("manifold", "generate"):
        argv[1:1] = ["--model", model_dir]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and needle in err, err
