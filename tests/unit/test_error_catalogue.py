"""A catalogue of bad inputs across the CLI, the loaders, uploads and settings.

Every case must end in exit code 2 (CLI) or an ``st.error`` (dashboard) whose message
names the user's file or value and says what to do; never a traceback, a temporary path
or advice to load a file unsafely. An internal error (a bug) exits 1 with a traceback.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from refusal_core.cli import main
from tests._catalogue_inputs import make_inputs

ROOT = Path(__file__).resolve().parents[2]
FIX = re.compile(
    r"use |give |choose |pass |add |re-save|recompute|export |install|lower |check |must |should |build |score |"
    r"expected|available|valid values|spec is one of|supported:|register_family|upload|a file path|"
    r"save the",
    re.IGNORECASE,
)
UNSAFE = ("weights_only=False", "weights_only", "arbitrary code", "Traceback")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    return make_inputs(tmp_path_factory.mktemp("catalogue"))


def _with(command: list[str], base: list[str], extra: tuple[str, ...]) -> list[str]:
    """``command`` + ``base`` flags + ``extra``; a flag in ``extra`` replaces the base one (a
    flag given twice is itself refused, so the cases must not rely on "the last one wins")."""
    given = {token for token in extra if token.startswith("--")}
    kept, skip = [], False
    for index, token in enumerate(base):
        if skip:
            skip = False
            continue
        if token in given:
            skip = index + 1 < len(base) and not base[index + 1].startswith("--")
            continue
        kept.append(token)
    return [*command, *kept, *extra]


def _search(*extra: str) -> list[str]:
    return _with(["directions", "search"], ["--model", "{model}", "--pool", "{good}", "--k", "1", "--trials", "1",
                 "--objective", "score", "--limit", "2", "--out", "{tmp}/searched"], extra)


def _som(*extra: str) -> list[str]:
    return _with(["directions", "som"], ["--model", "{model}", "--layer", "1", "--limit", "3", "--out", "{tmp}/som"], extra)


def _generate(*extra: str) -> list[str]:
    return _with(["generate"], ["--model", "{model}", "--limit", "1", "--max-new-tokens", "2"], extra)


def _acts(*extra: str) -> list[str]:
    return _with(["activations"], ["--model", "{model}", "--limit", "2"], extra)


# (case, argv with {placeholders} from the files fixture, text the message must name)
CLI_CASES = [
    ("missing prompt file", _acts("--harmful", "{missing}"), "missing.txt"),
    ("empty prompt file", _acts("--harmful", "{empty_txt}"), "empty.txt"),
    ("blank prompt file", _acts("--harmful", "{blank_txt}"), "blank.txt"),
    ("wrong column", _acts("--harmful", "{questions_csv}", "--column", "prompt"), "'prompt'"),
    ("no prompt column", _acts("--harmful", "{questions_csv}"), "questions.csv"),
    ("truncated json", _acts("--harmful", "{truncated_json}"), "truncated.json"),
    ("truncated jsonl", _acts("--harmful", "{truncated_jsonl}"), "truncated.jsonl"),
    ("not utf-8", _acts("--harmful", "{latin1_txt}"), "latin1.txt"),
    ("json of numbers", _acts("--harmful", "{numbers_json}"), "numbers.json"),
    ("unknown split", _acts("--harmful", "builtin:harmful/dev"), "'dev'"),
    ("limit 0", _acts("--limit", "0"), "--limit"),
    ("missing model folder", ["activations", "--model", "{tmp}/nowhere"], "nowhere"),
    ("unknown bundled model", ["activations", "--model", "bundled:gpt-5"], "bundled:gpt-5"),
    ("unknown dtype", _acts("--dtype", "float8"), "float8"),
    ("unknown model family", ["activations", "--model", "{neox}"], "gpt_neox"),
    ("layer out of range", _som("--layer", "7"), "--layer 7"),
    ("negative layer", _som("--layer", "-1"), "--layer -1"),
    ("position not recorded", _som("--position", "0"), "Position 0"),
    ("som of width 0", _som("--x", "0"), "x"),
    ("more clusters than prompts", ["directions", "cluster", "--model", "{model}", "--layer", "1", "--k", "50",
                                    "--limit", "3", "--out", "{tmp}/c"], "50"),
    ("missing direction set", _generate("--ablate", "{tmp}/nothere"), "nothere.safetensors"),
    ("direction set of another width", _generate("--ablate", "{narrow}"), "width 32"),
    ("direction set with NaN", _generate("--ablate", "{nan}"), "NaN"),
    ("truncated direction file", _generate("--ablate", "{truncated_set}"), "truncated_set.safetensors"),
    ("broken direction metadata", _generate("--ablate", "{badjson}"), "badjson.json"),
    ("unknown direction name", _generate("--ablate", "{good}:nope"), "nope"),
    ("actadd of two directions", _generate("--actadd", "{good}"), "--actadd"),
    ("actadd layer out of range", _generate("--actadd", "{good}:d0", "--layer", "9"), "--layer 9"),
    ("zero new tokens", _generate("--max-new-tokens", "0"), "max_new_tokens"),
    ("zero temperature", _generate("--sample", "--temperature", "0"), "temperature"),
    ("bad storage URL", _search("--storage", "ftp://x/y"), "ftp://x/y"),
    ("unreachable database", _search("--storage", "postgresql://me:hunter2@/db?host=/nonexistent-dir"), "postgresql://me:***@"),
    ("storage is a folder", _search("--storage", "{tmp}"), "is a folder"),
    ("bad study name", _search("--study", "my study"), "'my study'"),
    ("k larger than the pool", _search("--k", "5"), "k=5"),
    ("negative trials", _search("--trials", "-1"), "-1"),
    ("export over other files", ["export-model", "--model", "{model}", "--ablate", "{good}", "--out", "{theirs}",
                                 "--overwrite"], "theirs"),
    ("export onto a file", ["export-model", "--model", "{model}", "--ablate", "{good}", "--out", "{afile}"], "afile"),
    ("select a non-DIM set", ["directions", "select", "--model", "{model}", "--dirs", "{good}", "--limit", "2",
                              "--out", "{tmp}/sel.json"], "directions dim"),
    ("optimize zero steps", ["directions", "optimize", "--model", "{model}", "--init", "{good}:d0", "--steps", "0",
                             "--limit", "2", "--out", "{tmp}/o"], "steps=0"),
]


@pytest.mark.parametrize("argv, names", [pytest.param(a, n, id=c) for c, a, n in CLI_CASES])
def test_cli_bad_input_exits_2_naming_the_value_and_the_fix(files, argv, names, capsys):
    code = main([part.format(**files) for part in argv])
    err = capsys.readouterr().err
    message = err[err.rindex("error: "):] if "error: " in err else err
    assert code == 2, err[-2000:]
    assert names in message, message
    assert FIX.search(message), f"no fix in: {message}"
    assert not any(text in err for text in UNSAFE), message
    assert "hunter2" not in err


def test_the_catalogue_is_large_enough():
    assert len(CLI_CASES) + len(UPLOAD_CASES) + 2 >= 30


def test_nothing_computed_before_is_lost(files, capsys):
    """A failed export leaves both the user's folder and an earlier export as they were."""
    out = Path(files["tmp"]) / "kept-export"
    assert main(["export-model", "--model", files["model"], "--ablate", f"{files['good']}:d0", "--out", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    assert main(["export-model", "--model", files["model"], "--ablate", files["narrow"], "--out", str(out), "--overwrite"]) == 2
    assert main(["export-model", "--model", files["model"], "--ablate", files["good"], "--out", files["theirs"], "--overwrite"]) == 2
    assert sorted(p.name for p in out.iterdir()) == before
    assert (Path(files["theirs"]) / "notes.txt").read_text() == "someone's notes"
    capsys.readouterr()


def test_an_internal_error_is_a_bug_exit_1_with_a_traceback(files):
    """A ValueError that is not a UserError is not bad input: no exit 2, a traceback instead."""
    script = (
        "import runpy, sys\n"
        "import refusal_core.prompts.loaders as loaders\n"
        "def broken(*args, **kwargs):\n"
        "    raise ValueError('an internal bug')\n"
        "loaders.resolve_prompt_set = broken\n"
        "sys.argv = ['refusal_core', *sys.argv[1:]]\n"
        "runpy.run_module('refusal_core', run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, "activations", "--model", files["model"]], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" in done.stderr and "an internal bug" in done.stderr


# ---------------------------------------------------------------------------------------
# Uploads and settings in the dashboard (AppTest)
# ---------------------------------------------------------------------------------------

def _pt(tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return buffer.getvalue()


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def _pair(stem: str, vectors: torch.Tensor, truncate: bool = False) -> list[tuple[str, bytes, str]]:
    tensors = save_safetensors({"vectors": vectors})
    meta = b'{"names": ["a"], "provenance": [{}], "meta": {}}'
    return [(f"{stem}.safetensors", tensors[:30] if truncate else tensors, "application/octet-stream"),
            (f"{stem}.json", meta, "application/json")]


# (case, uploaded files, text the st.error must name)
UPLOAD_CASES = [
    ("pt of pickled objects", [("evil.pt", _pt({"x": _Evil()}), "application/octet-stream")], "evil.pt"),
    ("pt of random bytes", [("noise.pt", os.urandom(64), "application/octet-stream")], "noise.pt"),
    ("pt of another width", [("other.pt", _pt(torch.randn(2, 10)), "application/octet-stream")], "width 10"),
    ("truncated safetensors", _pair("cut", torch.randn(1, 64), truncate=True), "cut.safetensors"),
    ("safetensors without json", _pair("lonely", torch.randn(1, 64))[:1], "lonely"),
    ("corrupt zip", [("broken.zip", b"PK\x03\x04 not really", "application/zip")], "broken.zip"),
    ("pair of another width", _pair("narrow", torch.randn(1, 32)), "width 32"),
]


@pytest.fixture(scope="module")
def app_with_activations():
    pytest.importorskip("streamlit.testing.v1")
    from tests.unit import test_app

    patch = pytest.MonkeyPatch()
    patch.setenv(test_app.TEST_MODEL_ENV, "tiny")
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("REFUSAL_ATLAS_CACHE", tempfile.mkdtemp(prefix="catalogue-cache-"))
    at = test_app._with_activations()
    at.switch_page("app_pages/export.py").run()
    yield at, test_app._workspace(at)
    patch.undo()


@pytest.mark.parametrize("uploads, names", [pytest.param(u, n, id=c) for c, u, n in UPLOAD_CASES])
def test_bad_upload_shows_st_error_and_keeps_earlier_results(app_with_activations, uploads, names):
    at, ws = app_with_activations
    dim = ws.direction_sets["DIM"]
    at.file_uploader(key="export_upload").set_value(uploads if len(uploads) > 1 else uploads[0]).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(names in error for error in errors), errors
    message = next(error for error in errors if names in error)
    assert FIX.search(message) or "width" in message, message
    assert not any(text in message for text in UNSAFE), message
    assert tempfile.gettempdir() not in message, message
    assert ws.direction_sets["DIM"] is dim and ws.has_activations  # nothing computed before is lost


def test_bad_settings_in_the_sidebar_show_st_error(app_with_activations):
    at, ws = app_with_activations
    at.radio(key="atlas_harmful_source").set_value("Upload").run()
    at.file_uploader(key="atlas_harmful_file").set_value(("prompts.csv", b"question\nhello\n", "text/csv")).run()
    errors = [e.value for e in at.error]
    assert not at.exception and any("prompts.csv" in error and "column" in error for error in errors), errors
    at.radio(key="atlas_harmful_source").set_value("Built-in").run()
    assert not at.exception
