"""Prompt sets: the built-in harmful/harmless instructions, refusal replies and loaders.

A :class:`PromptSet` is an immutable, hashable list of instructions (with optional
category labels) that the rest of the toolkit feeds to models. Prompt sets come from:

* the built-in data shipped in ``refusal_core/data`` (``builtin("harmful", "train")``),
* user files: ``.txt``, ``.json``, ``.jsonl`` and ``.csv`` (``load_prompt_file``),
* Hugging Face datasets, loaded at run time only (``load_hf_dataset``),
* or a single spec string that picks one of the above (``resolve_prompt_set``).

Every loading problem raises :class:`PromptSetError` with a message that says what is
wrong and how to fix it, so the dashboard can show it to the user verbatim.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Sequence

from refusal_core.prompts.limits import check_file_size, check_prompts
from refusal_core.prompts.sets import BUILTIN_KINDS, SPLITS, PromptSet, PromptSetError, check_choice, split_prompt_set

__all__ = [
    "BUILTIN_KINDS",
    "SPLITS",
    "PromptSet",
    "PromptSetError",
    "builtin",
    "load_hf_dataset",
    "load_prompt_file",
    "refusal_replies",
    "resolve_prompt_set",
    "split_prompt_set",
]

# Column names tried, in order, when the caller does not name one. They cover our own
# files ("instruction") and the common public prompt-set layouts.
DEFAULT_COLUMNS: tuple[str, ...] = ("instruction", "prompt", "goal", "text")
# Category columns are optional, so only one conventional name is auto-detected.
DEFAULT_CATEGORY_COLUMNS: tuple[str, ...] = ("category",)
SUPPORTED_EXTENSIONS: tuple[str, ...] = (".txt", ".json", ".jsonl", ".csv")
SPEC_FORMS = (
    "'builtin:harmful', 'builtin:harmless/val' (splits: all, train, val, test), "
    "'hf:owner/name' or 'hf:owner/name:split', or a path to a .txt/.json/.jsonl/.csv file"
)


# --------------------------------------------------------------------------- PromptSet


# --------------------------------------------------------------------------- splits


# --------------------------------------------------------------------------- built-ins


def _data_text(filename: str) -> str:
    # importlib.resources works for installed wheels and zipped packages, not just a checkout.
    return resources.files("refusal_core").joinpath("data").joinpath(filename).read_text(encoding="utf-8")


@functools.cache
def _builtin_all(kind: str) -> PromptSet:
    filename = f"{kind}.jsonl"
    rows = _rows_from_jsonl(_data_text(filename), filename)
    return _build(f"builtin:{kind}", f"refusal_core/data/{filename}", rows, filename)


def builtin(kind: str, split: str = "all") -> PromptSet:
    """A built-in prompt set: ``kind`` in ``BUILTIN_KINDS``, ``split`` in ``"all"`` + ``SPLITS``.

    Splits are fixed (seeded, stratified by category) so results are comparable across runs.
    """
    kind = check_choice("built-in prompt set", kind, BUILTIN_KINDS)
    split = check_choice("split", split, ("all", *SPLITS))
    # Cached sets are safe to share because PromptSet is immutable.
    return split_prompt_set(_builtin_all(kind), split)


@functools.lru_cache(maxsize=1)
def _refusals() -> tuple[str, ...]:
    data = json.loads(_data_text("refusals.json"))
    if not isinstance(data, list) or not all(isinstance(r, str) and r.strip() for r in data):
        raise PromptSetError("refusal_core/data/refusals.json must be a JSON list of non-empty strings.")
    return tuple(data)


def refusal_replies() -> list[str]:
    """The built-in refusal replies (a fresh list each call, so callers may mutate it)."""
    return list(_refusals())


# --------------------------------------------------------------------------- file loading

# One loaded prompt and its category (None when the source has no labels).
Row = tuple[str, str | None]


def load_prompt_file(
    path: str | os.PathLike[str],
    column: str | None = None,
    category_column: str | None = None,
) -> PromptSet:
    """Load prompts from a ``.txt``, ``.json``, ``.jsonl`` or ``.csv`` file.

    * ``.txt``: one prompt per line; blank lines are ignored.
    * ``.json``: a list of strings, a list of objects, or ``{"instructions": [...]}``.
    * ``.jsonl``: one string or object per line.
    * ``.csv``: a header row; the prompt column is ``column`` or the first of
      ``DEFAULT_COLUMNS`` present.

    Objects and CSV rows take their category from ``category_column`` (or a ``category``
    field if present). Whitespace is stripped and exact duplicates are dropped, keeping
    the first occurrence.
    """
    p = Path(path).expanduser()
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise PromptSetError(
            f"Unsupported prompt file type {ext or '(no extension)'!r} for {p.name!r}; "
            f"supported extensions are: {', '.join(SUPPORTED_EXTENSIONS)}."
        )
    text = _read_utf8(p)
    if ext == ".txt":
        rows: list[Row] = [(line, None) for line in text.splitlines()]
    elif ext == ".jsonl":
        rows = _rows_from_jsonl(text, p.name, column, category_column)
    elif ext == ".json":
        rows = _rows_from_json(text, p.name, column, category_column)
    else:
        rows = _rows_from_csv(text, p.name, column, category_column)
    return _build(f"file:{p.name}", str(p.resolve()), rows, p.name)


def _read_utf8(p: Path) -> str:
    if not p.exists():
        raise PromptSetError(
            f"Prompt file not found: {str(p)!r}. Check the path (relative paths start at {os.getcwd()!r})."
        )
    if not p.is_file():
        raise PromptSetError(f"{str(p)!r} is not a file; point to a .txt, .json, .jsonl or .csv file.")
    try:
        check_file_size(p.stat().st_size, p.name)
        data = p.read_bytes()
    except OSError as exc:
        raise PromptSetError(
            f"Cannot read prompt file {str(p)!r}: {exc.strerror or exc}. Check its permissions (or copy it somewhere readable)."
        ) from None
    try:
        # utf-8-sig also accepts the byte-order mark that Excel and Notepad like to add.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptSetError(
            f"{p.name!r} is not valid UTF-8 (bad byte at position {exc.start}); "
            "re-save the file with UTF-8 encoding and try again."
        ) from None


def _rows_from_jsonl(text: str, label: str, column: str | None = None, category_column: str | None = None) -> list[Row]:
    items: list[tuple[int, Any]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append((lineno, json.loads(line)))
        except json.JSONDecodeError as exc:
            raise PromptSetError(
                f"{label!r} line {lineno} is not valid JSON ({exc.msg} at column {exc.colno}); "
                "each line must be one JSON string or object."
            ) from None
    return _rows_from_items(items, label, column, category_column, "line")


def _rows_from_json(text: str, label: str, column: str | None, category_column: str | None) -> list[Row]:
    try:
        data = json.loads(text) if text.strip() else []
    except json.JSONDecodeError as exc:
        raise PromptSetError(
            f"{label!r} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. The file may be cut "
            "short; re-save it as a JSON list of prompts (strings or objects with a prompt field)."
        ) from None
    if isinstance(data, dict):
        return _rows_from_json_object(data, label, column, category_column)
    if not isinstance(data, list):
        raise PromptSetError(
            f"{label!r} holds a JSON {type(data).__name__}; expected a list of strings, a list of objects, "
            'or an object like {"instructions": [...]}.'
        )
    return _rows_from_items(list(enumerate(data)), label, column, category_column, "item")


def _rows_from_json_object(
    data: dict[str, Any], label: str, column: str | None, category_column: str | None
) -> list[Row]:
    # {"instructions": [...], "categories": [...]} is our own export format; a named
    # column also works as the key of the list.
    for key in ([column] if column else []) + ["instructions", *DEFAULT_COLUMNS]:
        if key in data and isinstance(data[key], list):
            values = data[key]
            if all(isinstance(v, str) for v in values):
                cats = data.get("categories")
                if not (isinstance(cats, list) and len(cats) == len(values)):
                    cats = [None] * len(values)
                return [(v, _category_value(c)) for v, c in zip(values, cats)]
            # A list of objects under the key: pick fields from them as usual.
            inner_col = None if column == key else column
            return _rows_from_items(list(enumerate(values)), label, inner_col, category_column, "item")
    raise PromptSetError(
        f"{label!r} is a JSON object without a list of prompts; expected a key 'instructions' "
        f"(or one of {', '.join(DEFAULT_COLUMNS)}) holding a list. Keys found: {', '.join(map(str, data)) or 'none'}."
    )


def _rows_from_items(
    items: list[tuple[int, Any]], label: str, column: str | None, category_column: str | None, unit: str
) -> list[Row]:
    """Rows from parsed JSON values (strings or objects); ``unit`` names positions in errors."""
    first_obj = next((v for _, v in items if isinstance(v, dict)), None)
    col = cat_col = None
    if first_obj is not None:
        col = _pick_column(list(first_obj), column, DEFAULT_COLUMNS, label, "prompt")
        cat_col = _pick_category_column(list(first_obj), category_column, label)
    rows: list[Row] = []
    for pos, value in items:
        if isinstance(value, str):
            rows.append((value, None))
        elif isinstance(value, dict):
            rows.append(_row_from_mapping(value, col, cat_col, label, f"{unit} {pos}"))
        else:
            raise PromptSetError(
                f"{label!r} {unit} {pos} is a JSON {type(value).__name__}; expected a string or an object; make each item a prompt string or an object with a prompt field."
            )
    return rows


def _row_from_mapping(obj: dict[str, Any], col: str | None, cat_col: str | None, label: str, where: str) -> Row:
    if col is None or col not in obj:
        raise PromptSetError(
            f"{label!r} {where} has no {col!r} field; fields there: {', '.join(map(str, obj)) or 'none'}."
        )
    value = obj[col]
    if value is None:
        value = ""  # treated like a blank line and skipped
    if not isinstance(value, str):
        raise PromptSetError(f"{label!r} {where}: field {col!r} is {value!r}; prompts must be text.")
    return value, _category_value(obj.get(cat_col) if cat_col else None)


def _rows_from_csv(text: str, label: str, column: str | None, category_column: str | None) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        fields = [f for f in (reader.fieldnames or []) if f is not None]
        if not fields:
            raise PromptSetError(f"{label!r} has no header row; the first line must name the columns (e.g. 'prompt').")
        col = _pick_column(fields, column, DEFAULT_COLUMNS, label, "prompt")
        cat_col = _pick_category_column(fields, category_column, label)
        return [((r.get(col) or ""), _category_value(r.get(cat_col) if cat_col else None)) for r in reader]
    except csv.Error as exc:
        raise PromptSetError(f"{label!r} is not a readable CSV file (line {reader.line_num}: {exc}).") from None


def _pick_column(available: list[str], wanted: str | None, defaults: Sequence[str], label: str, what: str) -> str:
    """The named column if present, else the first default present; errors list what exists."""
    shown = ", ".join(repr(a) for a in available) or "none"
    if wanted is not None:
        if wanted not in available:
            raise PromptSetError(
                f"Column {wanted!r} not found in {label!r}; available columns: {shown}; pass one of them."
            )
        return wanted
    for name in defaults:
        if name in available:
            return name
    raise PromptSetError(
        f"Could not find a {what} column in {label!r}: none of {', '.join(defaults)} is present. "
        f"Available columns: {shown}. Pass the column name explicitly."
    )


def _pick_category_column(available: list[str], wanted: str | None, label: str) -> str | None:
    if wanted is not None:
        return _pick_column(available, wanted, (), label, "category")
    return next((c for c in DEFAULT_CATEGORY_COLUMNS if c in available), None)


def _category_value(value: Any) -> str | None:
    # Numeric labels are common in public sets; keep them as text, and blanks as None.
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _build(name: str, source: str, rows: Iterable[Row], label: str) -> PromptSet:
    """Strip, drop blanks and exact duplicates (first wins), and wrap in a PromptSet."""
    seen: set[str] = set()
    texts: list[str] = []
    cats: list[str | None] = []
    for text, cat in rows:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            texts.append(text)
            cats.append(cat)
    if not texts:
        raise PromptSetError(
            f"No prompts found in {label!r}: it is empty or holds only blank entries. "
            "Add at least one non-empty prompt."
        )
    check_prompts(texts, label)
    return PromptSet(name=name, instructions=tuple(texts), categories=tuple(cats), source=source)


# --------------------------------------------------------------------------- Hugging Face


def load_hf_dataset(
    name: str,
    split: str = "train",
    column: str | None = None,
    category_column: str | None = None,
    config: str | None = None,
) -> PromptSet:
    """Load prompts from a Hugging Face dataset at run time (never vendored into the repo).

    Column choice follows the CSV rules: ``column`` or the first of ``DEFAULT_COLUMNS``.
    """
    try:
        import datasets  # lazy: an optional dependency only this loader needs
    except ImportError:
        raise PromptSetError(
            "Loading Hugging Face datasets needs the 'datasets' package: run `pip install datasets`."
        ) from None
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001 - any hub/network/config failure becomes one clear error
        raise PromptSetError(
            f"Could not load Hugging Face dataset {name!r} (config={config!r}, split={split!r}): "
            f"{type(exc).__name__}: {exc}. Check the name, split and config, and that you are online or cached."
        ) from None
    label = f"{name}:{split}"
    fields = list(ds.column_names)
    col = _pick_column(fields, column, DEFAULT_COLUMNS, label, "prompt")
    cat_col = _pick_category_column(fields, category_column, label)
    values = ds[col]
    cats = ds[cat_col] if cat_col else [None] * len(values)
    rows: list[Row] = []
    for i, (value, cat) in enumerate(zip(values, cats)):
        if value is not None and not isinstance(value, str):
            raise PromptSetError(
                f"{label!r} row {i}: column {col!r} holds {type(value).__name__}, not text; pick a text column."
            )
        rows.append((value or "", _category_value(cat)))
    source = f"huggingface:{name}" + (f"/{config}" if config else "")
    return _build(f"hf:{label}", source, rows, label)


# --------------------------------------------------------------------------- specs


def resolve_prompt_set(spec: str, column: str | None = None, category_column: str | None = None) -> PromptSet:
    """Turn a spec string into a prompt set.

    ``"builtin:harmful"``, ``"builtin:harmless/val"``, ``"hf:owner/name"``,
    ``"hf:owner/name:test"``, or a path to a prompt file.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise PromptSetError(f"Empty prompt-set spec; use one of: {SPEC_FORMS}.")
    spec = spec.strip()
    if spec.startswith("builtin:"):
        kind, _, split = spec[len("builtin:") :].partition("/")
        return builtin(kind, split or "all")
    if spec.startswith("hf:"):
        name, _, split = spec[len("hf:") :].partition(":")
        if not name:
            raise PromptSetError(
                f"Spec {spec!r} names no dataset; write it like 'hf:owner/name' or 'hf:owner/name:split'."
            )
        return load_hf_dataset(name, split or "train", column=column, category_column=category_column)
    if not Path(spec).expanduser().exists():
        raise PromptSetError(f"Prompt file not found: {spec!r}. A prompt-set spec is one of: {SPEC_FORMS}.")
    return load_prompt_file(spec, column=column, category_column=category_column)
