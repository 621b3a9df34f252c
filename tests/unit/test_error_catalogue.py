"""A catalogue of bad inputs across the CLI, the loaders, uploads and settings.

Every case must end in exit code 2 (CLI) or an ``st.error`` (dashboard) whose message
names the user's file or value and says what to do; never a traceback, a temporary path
or advice to load a file unsafely. An internal error (a bug) exits 1 with a traceback.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from refusal_core.cli import main
from tests._catalogue_inputs import make_inputs
from tests.app_hooks import no_umap_warm_up, use_tiny_models

ROOT = Path(__file__).resolve().parents[2]
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
    return _with(
        ["directions", "search"],
        [
            "--model",
            "{model}",
            "--pool",
            "{good}",
            "--k",
            "1",
            "--trials",
            "1",
            "--objective",
            "score",
            "--limit",
            "2",
            "--out",
            "{tmp}/searched",
        ],
        extra,
    )


def _som(*extra: str) -> list[str]:
    return _with(
        ["directions", "som"], ["--model", "{model}", "--layer", "1", "--limit", "3", "--out", "{tmp}/som"], extra
    )


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
    ("unknown model family", ["activations", "--model", "{mamba}"], "model_type='mamba'"),
    ("layer out of range", _som("--layer", "7"), "--layer 7"),
    ("negative layer", _som("--layer", "-1"), "--layer -1"),
    ("position not recorded", _som("--position", "0"), "Position 0"),
    ("som of width 0", _som("--x", "0"), "x"),
    (
        "more clusters than prompts",
        [
            "directions",
            "cluster",
            "--model",
            "{model}",
            "--layer",
            "1",
            "--k",
            "50",
            "--limit",
            "3",
            "--out",
            "{tmp}/c",
        ],
        "50",
    ),
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
    (
        "unreachable database",
        _search("--storage", "postgresql://me:hunter2@/db?host=/nonexistent-dir"),
        "postgresql://me:***@",
    ),
    ("storage is a folder", _search("--storage", "{tmp}"), "is a folder"),
    ("bad study name", _search("--study", "my study"), "'my study'"),
    ("k larger than the pool", _search("--k", "5"), "k=5"),
    ("negative trials", _search("--trials", "-1"), "-1"),
    (
        "export over other files",
        ["export-model", "--model", "{model}", "--ablate", "{good}", "--out", "{theirs}", "--overwrite"],
        "theirs",
    ),
    ("export onto a file", ["export-model", "--model", "{model}", "--ablate", "{good}", "--out", "{afile}"], "afile"),
    (
        "select a non-DIM set",
        ["directions", "select", "--model", "{model}", "--dirs", "{good}", "--limit", "2", "--out", "{tmp}/sel.json"],
        "directions dim",
    ),
    (
        "optimize zero steps",
        [
            "directions",
            "optimize",
            "--model",
            "{model}",
            "--init",
            "{good}:d0",
            "--steps",
            "0",
            "--limit",
            "2",
            "--out",
            "{tmp}/o",
        ],
        "steps=0",
    ),
    # Inputs that were a traceback or a misleading message before they were caught
    ("one 5 MB line", _acts("--harmful", "{one_line}"), "one_line.txt"),
    ("negative kl-limit", _generate("--kl-limit", "-1"), "--kl-limit"),
    ("coeff nan", _generate("--actadd", "{good}:d0", "--coeff", "nan"), "--coeff nan"),
    ("coeff overflow", _generate("--actadd", "{good}:d0", "--coeff", "1e400"), "--coeff inf"),
    ("device without a GPU", _acts("--device", "cuda:99"), "cuda:99"),
    (
        "system prompt the template rejects",
        _acts("--model", "{nosystem}", "--system-prompt", "Be brief."),
        "--system-prompt",
    ),
    ("colon path, unknown name", _generate("--ablate", "{colon}:zz"), "zz"),
    ("direction file with bad provenance", _generate("--ablate", "{badprov}"), "badprov.json"),
    ("out inside a file", ["directions", "dim", "--model", "{tmp}/nowhere", "--out", "{afile}/sub/dim"], "afile"),
    ("repeated single-value flag", _generate("--seed", "1", "--seed", "2"), "--seed"),
    ("same ablate twice", _generate("--ablate", "{good}", "--ablate", "{good}"), "ablate(good)"),
]


# The fix each case's message must give (the words of the fix itself, not any sentence with a verb).
CLI_FIXES = {
    "missing prompt file": "a path to a .txt/.json/.jsonl/.csv file",
    "empty prompt file": "Add at least one non-empty prompt",
    "blank prompt file": "Add at least one non-empty prompt",
    "wrong column": "pass one of them",
    "no prompt column": "Pass the column name explicitly",
    "truncated json": "re-save it as a JSON list of prompts",
    "truncated jsonl": "each line must be one JSON string or object",
    "not utf-8": "re-save the file with UTF-8 encoding",
    "json of numbers": "make each item a prompt string",
    "unknown split": "valid values are: all, train, val, test",
    "limit 0": "give a number >= 1",
    "missing model folder": "give a folder holding a Hugging Face model",
    "unknown bundled model": "use bundled:refusal-organism",
    "unknown dtype": "use one of auto, float32",
    "unknown model family": "register it with refusal_core.model.families.register_family(",
    "layer out of range": "layers 0..2; choose one of them",
    "negative layer": "layers 0..2; choose one of them",
    "position not recorded": "use one of the recorded positions",
    "som of width 0": "give 1 or more (--x)",
    "more clusters than prompts": "choose a k in that range",
    "missing direction set": "give the stem of a set saved by this toolkit",
    "direction set of another width": "Use directions computed on this model",
    "direction set with NaN": "recompute them from valid activations",
    "truncated direction file": "export the set again",
    "broken direction metadata": "export the set again",
    "unknown direction name": "use one of this set's names: d0, d1",
    "actadd of two directions": "PATH:name",
    "actadd layer out of range": "layers 0..2; choose one of them",
    "zero new tokens": "give 1 or more new tokens",
    "zero temperature": "use do_sample=False for greedy",
    "bad storage URL": "give sqlite:///PATH.db",
    "unreachable database": "Check that the database server is running",
    "storage is a folder": "give a file path such as",
    "bad study name": "use 1 to 128 letters",
    "k larger than the pool": "lower k or add directions",
    "negative trials": "give 0 or more trials",
    "export over other files": "Choose a new or empty folder",
    "export onto a file": "choose another output folder",
    "select a non-DIM set": "the set written by `directions dim`",
    "optimize zero steps": "give each 1 or more",
    "one 5 MB line": "raise the limit with REFUSAL_ATLAS_MAX_PROMPT_CHARS",
    "negative kl-limit": "give a number >= 0",
    "coeff nan": "give an ordinary number",
    "coeff overflow": "give an ordinary number",
    "device without a GPU": "use --device cpu",
    "system prompt the template rejects": "drop --system-prompt",
    "colon path, unknown name": "use one of this set's names: d0, d1",
    "direction file with bad provenance": "export the set again with this toolkit",
    "out inside a file": "choose another path",
    "repeated single-value flag": "give it once",
    "same ablate twice": "give each once",
}


def test_every_case_has_its_own_fix():
    assert sorted(CLI_FIXES) == sorted(case for case, _, _ in CLI_CASES)


@pytest.mark.parametrize("argv, names, fix", [pytest.param(a, n, CLI_FIXES.get(c), id=c) for c, a, n in CLI_CASES])
def test_cli_bad_input_exits_2_naming_the_value_and_the_fix(files, argv, names, fix, capsys):
    code = main([part.format(**files) for part in argv])
    err = capsys.readouterr().err
    message = err[err.rindex("error: ") :] if "error: " in err else err
    assert code == 2, err[-2000:]
    assert names in message, message
    assert fix is not None and fix.lower() in message.lower(), f"no fix {fix!r} in: {message}"
    assert not any(text in err for text in UNSAFE), message
    assert "hunter2" not in err


def test_the_catalogue_is_large_enough():
    assert len(CLI_CASES) + len(UPLOAD_CASES) + 2 >= 30


def test_nothing_computed_before_is_lost(files, capsys):
    """A failed export leaves both the user's folder and an earlier export as they were."""
    out = Path(files["tmp"]) / "kept-export"
    assert main(["export-model", "--model", files["model"], "--ablate", f"{files['good']}:d0", "--out", str(out)]) == 0
    before = sorted(p.name for p in out.iterdir())
    assert (
        main(["export-model", "--model", files["model"], "--ablate", files["narrow"], "--out", str(out), "--overwrite"])
        == 2
    )
    assert (
        main(
            [
                "export-model",
                "--model",
                files["model"],
                "--ablate",
                files["good"],
                "--out",
                files["theirs"],
                "--overwrite",
            ]
        )
        == 2
    )
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
    done = subprocess.run(
        [sys.executable, "-c", script, "activations", "--model", files["model"]],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
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
    return [
        (f"{stem}.safetensors", tensors[:30] if truncate else tensors, "application/octet-stream"),
        (f"{stem}.json", meta, "application/json"),
    ]


def _zip(members: list[tuple[str, bytes]], encrypted: bool = False, corrupt: bool = False) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            archive.writestr(name, data)
    data = bytearray(buffer.getvalue())
    if encrypted:  # set the "encrypted" flag bit in every local and central header, as a password-protected zip has
        for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.find(signature)
            while at >= 0:
                data[at + offset] |= 0x1
                at = data.find(signature, at + 4)
    if corrupt:  # damage the first member's deflate stream, leaving the zip directory intact
        start = 30 + len(members[0][0])
        data[start : start + 12] = b"\xff" * 12
    return bytes(data)


def _pair_files(
    stem: str, meta: bytes = b'{"names": ["a"], "provenance": [{}], "meta": {}}'
) -> list[tuple[str, bytes]]:
    return [(f"{stem}.safetensors", save_safetensors({"vectors": torch.randn(1, 64)})), (f"{stem}.json", meta)]


# (case, uploaded files, text the st.error must name, the fix it must give)
UPLOAD_CASES = [
    ("pt of pickled objects", [("evil.pt", _pt({"x": _Evil()}), "application/octet-stream")], "evil.pt"),
    ("pt of random bytes", [("noise.pt", os.urandom(64), "application/octet-stream")], "noise.pt"),
    ("pt of another width", [("other.pt", _pt(torch.randn(2, 10)), "application/octet-stream")], "width 10"),
    ("truncated safetensors", _pair("cut", torch.randn(1, 64), truncate=True), "cut.safetensors"),
    ("safetensors without json", _pair("lonely", torch.randn(1, 64))[:1], "lonely"),
    ("corrupt zip", [("broken.zip", b"PK\x03\x04 not really", "application/zip")], "broken.zip"),
    ("pair of another width", _pair("narrow", torch.randn(1, 32)), "width 32"),
    (
        "zip with a damaged deflate stream",
        [("damaged.zip", _zip(_pair_files("d"), corrupt=True), "application/zip")],
        "damaged.zip",
    ),
    (
        "zip with an encrypted member",
        [("locked.zip", _zip(_pair_files("e"), encrypted=True), "application/zip")],
        "locked.zip",
    ),
    (
        "zip with two files of one name",
        [
            (
                "twice.zip",
                _zip([(f"{folder}/{name}", data) for folder in ("a", "b") for name, data in _pair_files("x")]),
                "application/zip",
            )
        ],
        "'x.safetensors'",
    ),
    (
        "pair with bad provenance",
        [
            (name, data, "application/octet-stream")
            for name, data in _pair_files("badprov", b'{"names": ["a"], "provenance": [1]}')
        ],
        "badprov.json",
    ),
]
UPLOAD_FIXES = {
    "pt of pickled objects": "upload the .zip or .safetensors + .json export instead",
    "pt of random bytes": "upload the .zip or .safetensors + .json export instead",
    "pt of another width": "Use directions computed on this model",
    "truncated safetensors": "export the set again",
    "safetensors without json": "upload both files of the pair",
    "corrupt zip": "upload the .zip the Download button gave, whole",
    "pair of another width": "Use directions computed on this model",
    "zip with a damaged deflate stream": "upload the .zip the Download button gave, whole",
    "zip with an encrypted member": "upload an unencrypted zip",
    "zip with two files of one name": "rename one of them",
    "pair with bad provenance": "export the set again with this toolkit",
}


@pytest.fixture(scope="module")
def app_with_activations():
    from tests.unit import test_app

    patch = pytest.MonkeyPatch()
    use_tiny_models(patch)
    no_umap_warm_up(patch)
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("REFUSAL_ATLAS_CACHE", tempfile.mkdtemp(prefix="catalogue-cache-"))
    at = test_app._with_activations()
    at.switch_page("app_pages/export.py").run()
    yield at, test_app._workspace(at)
    patch.undo()


def test_every_upload_case_has_its_own_fix():
    assert sorted(UPLOAD_FIXES) == sorted(case for case, _, _ in UPLOAD_CASES)


@pytest.mark.parametrize(
    "uploads, names, fix", [pytest.param(u, n, UPLOAD_FIXES.get(c), id=c) for c, u, n in UPLOAD_CASES]
)
def test_bad_upload_shows_st_error_and_keeps_earlier_results(app_with_activations, uploads, names, fix):
    at, ws = app_with_activations
    dim = ws.direction_sets["DIM"]
    at.file_uploader(key="export_upload").set_value(uploads if len(uploads) > 1 else uploads[0]).run()
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(names in error for error in errors), errors
    message = next(error for error in errors if names in error)
    assert fix is not None and fix.lower() in message.lower(), f"no fix {fix!r} in: {message}"
    assert not any(name.startswith("imported:") for name in ws.direction_sets)  # nothing imported
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
