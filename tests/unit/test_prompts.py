"""Built-in prompt sets, splits, refusal replies and the prompt-file / dataset loaders."""

from __future__ import annotations

import json
import re
import sys
import types
from collections import Counter

import pytest

from refusal_core.prompts.loaders import builtin, load_hf_dataset, load_prompt_file, refusal_replies, resolve_prompt_set
from refusal_core.prompts.sets import SPLITS, PromptSet, PromptSetError, split_indices

REFUSAL_OPENINGS = (
    "I'm sorry",
    "I am sorry",
    "I apologize",
    "I can't",
    "I cannot",
    "I won't",
    "Sorry",
    "As an AI",
    "I'm not able to",
    "I must decline",
)


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


# --------------------------------------------------------------------------- built-in data


def test_harmful_counts_and_categories():
    ps = builtin("harmful")
    counts = Counter(ps.categories)
    assert len(ps) >= 300
    assert None not in counts and len(counts) >= 10
    assert min(counts.values()) >= 20


def test_harmless_counts_and_topics():
    ps = builtin("harmless")
    assert len(ps) >= 420
    assert len(set(ps.categories)) >= 12 and None not in ps.categories


def test_no_duplicates_within_or_across_sets():
    harmful, harmless = builtin("harmful").instructions, builtin("harmless").instructions
    both = [_norm(t) for t in harmful + harmless]  # case/punctuation-insensitive
    assert len(both) == len(set(both))


def test_builtin_lengths_are_short_to_mid():
    for kind in ("harmful", "harmless"):
        lengths = [len(t.split()) for t in builtin(kind).instructions]
        assert min(lengths) >= 5 and max(lengths) <= 30, kind


@pytest.mark.parametrize("kind", ["harmful", "harmless"])
def test_splits_disjoint_covering_and_named(kind):
    full = builtin(kind)
    parts = {s: builtin(kind, s) for s in SPLITS}
    sets = {s: set(p.instructions) for s, p in parts.items()}
    assert sets["train"].isdisjoint(sets["val"]) and sets["train"].isdisjoint(sets["test"])
    assert sets["val"].isdisjoint(sets["test"])
    assert set().union(*sets.values()) == set(full.instructions)
    assert parts["val"].name == f"builtin:{kind}/val" and full.name == f"builtin:{kind}"
    assert 0.55 <= len(parts["train"]) / len(full) <= 0.65


@pytest.mark.parametrize("kind", ["harmful", "harmless"])
def test_splits_stratified(kind):
    cats = set(builtin(kind).categories)
    for split in SPLITS:
        assert set(builtin(kind, split).categories) == cats, split


def test_splits_deterministic():
    full = builtin("harmful")
    assert split_indices(full) == split_indices(full)
    # A fresh, uncached copy must split into exactly the same sets.
    copy = PromptSet("copy", full.instructions, full.categories, "test")
    for split in SPLITS:
        again = copy.subset(split_indices(copy)[split])
        assert again.content_hash() == builtin("harmful", split).content_hash()


def test_builtin_unknown_kind_or_split_lists_valid_values():
    with pytest.raises(PromptSetError, match="harmful, harmless"):
        builtin("evil")
    with pytest.raises(PromptSetError, match="all, train, val, test"):
        builtin("harmful", "dev")


def test_refusal_replies_mostly_start_with_common_openings():
    replies = refusal_replies()
    assert len(replies) >= 60 and len(set(replies)) == len(replies)
    assert "{" not in "".join(replies)  # no template placeholders
    hits = sum(r.startswith(REFUSAL_OPENINGS) for r in replies)
    assert hits / len(replies) >= 0.8
    replies.clear()  # callers get a copy; the cache must survive
    assert refusal_replies()


# --------------------------------------------------------------------------- PromptSet


def test_promptset_hash_subset_head():
    ps = PromptSet("t", ["a", "b", "c"], ["x", None, "y"], "mem")
    assert len(ps) == 3 and isinstance(ps.instructions, tuple)
    assert ps.content_hash() == PromptSet("other", ("a", "b", "c"), ("x", None, "y"), "elsewhere").content_hash()
    assert ps.content_hash() != PromptSet("t", ["a", "b", "c"]).content_hash()
    assert re.fullmatch(r"[0-9a-f]{64}", ps.content_hash())
    sub = ps.subset([2, 0])
    assert sub.instructions == ("c", "a") and sub.categories == ("y", "x")
    assert ps.head(2).instructions == ("a", "b") and ps.head(10) is ps


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(instructions=[]), "empty"),
        (dict(instructions=["a", "b"], categories=["x"]), "categories"),
        (dict(instructions=["a", 3]), "non-empty string"),
        (dict(instructions=["a"], categories=[5]), "strings or None"),
    ],
)
def test_promptset_validation(kwargs, message):
    with pytest.raises(PromptSetError, match=message):
        PromptSet(name="bad", source="test", **kwargs)


def test_promptset_bad_subset_and_head():
    ps = PromptSet("t", ["a", "b"])
    for bad in ([5], [True], ["0"], []):
        with pytest.raises(PromptSetError):
            ps.subset(bad)
    with pytest.raises(PromptSetError, match="positive"):
        ps.head(0)


# --------------------------------------------------------------------------- file loading


def test_load_txt_strips_skips_blanks_and_dedups(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("  first  \n\nsecond\n   \nfirst\nthird\n", encoding="utf-8")
    ps = load_prompt_file(f)
    assert ps.instructions == ("first", "second", "third")
    assert ps.categories == (None, None, None) and ps.name == "file:p.txt"


def test_load_json_shapes(tmp_path):
    shapes = {
        "strings.json": ["a", "b"],
        "objects.json": [{"prompt": "a", "category": "x"}, {"prompt": "b", "category": "y"}],
        "wrapped.json": {"instructions": ["a", "b"], "categories": ["x", "y"]},
    }
    for name, data in shapes.items():
        (tmp_path / name).write_text(json.dumps(data), encoding="utf-8")
        assert load_prompt_file(tmp_path / name).instructions == ("a", "b"), name
    assert load_prompt_file(tmp_path / "objects.json").categories == ("x", "y")
    assert load_prompt_file(tmp_path / "wrapped.json").categories == ("x", "y")


def test_load_jsonl_objects_and_strings(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"goal": "a", "tag": "t1"}\n\n"b"\n{"goal": "c", "tag": "t2"}\n', encoding="utf-8")
    ps = load_prompt_file(f, category_column="tag")
    assert ps.instructions == ("a", "b", "c") and ps.categories == ("t1", None, "t2")


def test_load_csv_default_and_named_columns(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text('id,text,category\n1,"hello, world",greet\n2,bye,\n', encoding="utf-8-sig")  # BOM is fine
    ps = load_prompt_file(f)
    assert ps.instructions == ("hello, world", "bye") and ps.categories == ("greet", None)
    assert load_prompt_file(f, column="id").instructions == ("1", "2")


def test_builtin_file_round_trips_through_loader(tmp_path):
    full = builtin("harmless")
    f = tmp_path / "h.jsonl"
    rows = [{"instruction": t, "category": c} for t, c in zip(full.instructions, full.categories)]
    f.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    assert load_prompt_file(f).content_hash() == full.content_hash()


@pytest.mark.parametrize(
    "name, content, kwargs, message",
    [
        ("empty.txt", b"", {}, "No prompts found"),
        ("blank.txt", b"\n   \n\t\n", {}, "No prompts found"),
        ("empty.jsonl", b"\n\n", {}, "No prompts found"),
        ("empty.json", b"[]", {}, "No prompts found"),
        ("header.csv", b"prompt\n", {}, "No prompts found"),
        ("latin1.txt", "caf\u00e9\n".encode("latin-1"), {}, "UTF-8"),
        ("cols.csv", b"a,b\n1,2\n", {}, r"Available columns: 'a', 'b'"),
        ("named.csv", b"prompt\nhi\n", {"column": "question"}, r"available columns: 'prompt'"),
        ("named.jsonl", b'{"prompt": "hi"}\n', {"column": "question"}, r"available columns: 'prompt'"),
        ("cat.csv", b"prompt\nhi\n", {"category_column": "label"}, "'label' not found"),
        ("bad.jsonl", b'{"prompt": "a"}\n{"prompt": \n', {}, "line 2"),
        ("bad.json", b'["a", ', {}, "not valid JSON"),
        ("number.json", b"42", {}, "expected a list"),
        ("mixed.json", b'["a", 3]', {}, "item 1"),
        ("missing.jsonl", b'{"prompt": "a"}\n{"other": "b"}\n', {}, "line 2 has no 'prompt'"),
        ("prompts.xlsx", b"PK", {}, r"\.txt, \.json, \.jsonl, \.csv"),
        ("noext", b"hi", {}, "no extension"),
    ],
)
def test_bad_files_raise_helpful_errors(tmp_path, name, content, kwargs, message):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(PromptSetError, match=message):
        load_prompt_file(f, **kwargs)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(PromptSetError, match="not found"):
        load_prompt_file(tmp_path / "nope.txt")
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(PromptSetError, match="not a file"):
        load_prompt_file(tmp_path / "dir.txt")


def test_errors_are_value_errors():
    assert issubclass(PromptSetError, ValueError)


# --------------------------------------------------------------------------- Hugging Face


class _FakeDataset:
    def __init__(self, columns: dict[str, list]):
        self._columns = columns
        self.column_names = list(columns)

    def __getitem__(self, key: str) -> list:
        return self._columns[key]


def _fake_datasets(monkeypatch, columns=None, error=None):
    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        if error:
            raise error
        return _FakeDataset(columns)

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def test_hf_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(PromptSetError, match="pip install datasets"):
        load_hf_dataset("owner/name")


def test_hf_columns_and_errors(monkeypatch):
    calls = _fake_datasets(monkeypatch, {"goal": ["a", "b", "a"], "category": ["x", "y", "x"], "n": [1, 2, 3]})
    ps = load_hf_dataset("owner/name", split="test")
    assert ps.instructions == ("a", "b") and ps.categories == ("x", "y")
    assert ps.name == "hf:owner/name:test" and calls[-1] == ("owner/name", None, "test")
    with pytest.raises(PromptSetError, match="available columns: 'goal', 'category', 'n'"):
        load_hf_dataset("owner/name", column="prompt")
    with pytest.raises(PromptSetError, match="not text"):
        load_hf_dataset("owner/name", column="n")
    _fake_datasets(monkeypatch, error=FileNotFoundError("no such dataset"))
    with pytest.raises(PromptSetError, match="no such dataset"):
        load_hf_dataset("owner/missing")


# --------------------------------------------------------------------------- specs


def test_resolve_specs(tmp_path, monkeypatch):
    assert resolve_prompt_set("builtin:harmful") == builtin("harmful")
    assert resolve_prompt_set(" builtin:harmless/val ").name == "builtin:harmless/val"
    calls = _fake_datasets(monkeypatch, {"prompt": ["q"]})
    assert resolve_prompt_set("hf:owner/name:validation").instructions == ("q",)
    assert resolve_prompt_set("hf:owner/name").name == "hf:owner/name:train"
    assert [c[2] for c in calls] == ["validation", "train"]
    f = tmp_path / "p.csv"
    f.write_text("question\nhi\n", encoding="utf-8")
    assert resolve_prompt_set(str(f), column="question").instructions == ("hi",)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("", "Empty"),
        ("builtin:nasty", "harmful, harmless"),
        ("hf:", "names no dataset"),
        ("nowhere.txt", "builtin:harmful"),
    ],
)
def test_resolve_bad_specs(spec, message):
    with pytest.raises(PromptSetError, match=message):
        resolve_prompt_set(spec)
