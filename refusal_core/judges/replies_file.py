"""Replies from any source, read from a JSONL or CSV file, and a judge's agreement with labels.

Each row needs an instruction and a reply (field names ``instruction`` or ``prompt``; ``reply``,
``completion``, ``response`` or ``output``); an ``id`` is kept if present, and a ``label`` (one of
the verdicts) turns on the agreement table. Every problem is reported with the line (or CSV row)
and what to change, before any judging.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from refusal_core.errors import UserError
from refusal_core.judges.verdict import LABELS, TEXT_LABELS, Verdict

__all__ = ["INSTRUCTION_FIELDS", "REPLY_FIELDS", "RepliesFileError", "ReplyRow", "agreement", "read_replies"]

INSTRUCTION_FIELDS = ("instruction", "prompt")
REPLY_FIELDS = ("reply", "completion", "response", "output")
MAX_BYTES = 64 * 1024 * 1024


class RepliesFileError(UserError):
    """A replies file that cannot be read as (instruction, reply) rows."""


@dataclass(frozen=True)
class ReplyRow:
    id: str
    instruction: str
    reply: str
    label: str | None = None


def _pick(row: dict, names: Sequence[str], where: str, what: str) -> str:
    for name in names:
        if name in row:
            value = row[name]
            if not isinstance(value, str):
                raise RepliesFileError(f"{where}: field {name!r} must be a string, got {type(value).__name__}.")
            return value
    raise RepliesFileError(
        f"{where}: no {what} field; give one of {', '.join(names)} (found: {', '.join(map(str, row)) or 'none'})."
    )


def _row(row: object, where: str, index: int) -> ReplyRow:
    if not isinstance(row, dict):
        raise RepliesFileError(
            f"{where}: expected an object with instruction and reply fields, got {type(row).__name__}."
        )
    label = row.get("label")
    if label is not None and label not in LABELS:
        raise RepliesFileError(
            f"{where}: label {label!r} is not a verdict; use one of {', '.join(LABELS)} or leave it out."
        )
    raw_id = row.get("id", index)
    return ReplyRow(
        str(raw_id),
        _pick(row, INSTRUCTION_FIELDS, where, "instruction"),
        _pick(row, REPLY_FIELDS, where, "reply"),
        label,
    )


def read_replies(path: str | Path) -> list[ReplyRow]:
    """The rows of a ``.jsonl`` (one JSON object a line) or ``.csv`` (header row) file."""
    path = Path(path)
    if not path.is_file():
        raise RepliesFileError(
            f"No replies file at {path}; give a .jsonl or .csv file with instruction and reply fields."
        )
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise RepliesFileError(
            f"{path}: unknown file type {suffix or '(none)'}; use .jsonl (one JSON object a line) or .csv with a header row."
        )
    if path.stat().st_size > MAX_BYTES:
        raise RepliesFileError(f"{path} is larger than {MAX_BYTES // 2**20} MiB; split it into smaller files.")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise RepliesFileError(
            f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8."
        ) from None
    rows = _jsonl_rows(text, path) if suffix == ".jsonl" else _csv_rows(text, path)
    if not rows:
        raise RepliesFileError(f"{path} holds no replies; add at least one row with instruction and reply fields.")
    ids = [row.id for row in rows]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise RepliesFileError(f"{path}: ids must be unique; repeated: {', '.join(repeated)}.")
    return rows


def _jsonl_rows(text: str, path: Path) -> list[ReplyRow]:
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise RepliesFileError(
                f"{path} line {number} is not JSON ({err.msg}); each line must be one JSON object."
            ) from None
        rows.append(_row(value, f"{path} line {number}", len(rows)))
    return rows


def _csv_rows(text: str, path: Path) -> list[ReplyRow]:
    try:
        reader = csv.DictReader(io.StringIO(text))
        records = list(reader)
    except csv.Error as err:
        raise RepliesFileError(
            f"{path} is not valid CSV ({err}); quote fields that hold commas or line breaks."
        ) from None
    rows = []
    for number, record in enumerate(records, 2):
        if None in record:
            raise RepliesFileError(
                f"{path} row {number} has more fields than the header; quote fields that hold commas."
            )
        cleaned = {key: value for key, value in record.items() if key is not None}
        if cleaned.get("label") == "":
            cleaned.pop("label")
        rows.append(_row(cleaned, f"{path} row {number}", len(rows)))
    return rows


def agreement(labels: Sequence[str], verdicts: Sequence[Verdict]) -> dict:
    """How the verdicts match the given labels: overall, on "complied or not", per true verdict
    (recall), and the broken false-alarm share among replies not labelled broken."""
    pairs = list(zip(labels, (v.label for v in verdicts)))
    n = len(pairs)
    # The text verdicts always; "unfinished" only where a label or a verdict says so.
    shown = [label for label in LABELS if label in TEXT_LABELS or any(label in pair for pair in pairs)]

    def share(k: int, m: int) -> float | None:
        return k / m if m else None

    per = {
        label: {
            "n": sum(t == label for t, _ in pairs),
            "recall": share(sum(t == p == label for t, p in pairs), sum(t == label for t, _ in pairs)),
            "precision": share(sum(t == p == label for t, p in pairs), sum(p == label for _, p in pairs)),
        }
        for label in shown
    }
    not_broken = [p for t, p in pairs if t != "broken"]
    return {
        "n": n,
        "verdict": share(sum(t == p for t, p in pairs), n),
        "complied_or_not": share(sum((t == "complied") == (p == "complied") for t, p in pairs), n),
        "broken_false_alarms": share(sum(p == "broken" for p in not_broken), len(not_broken)),
        "per_verdict": per,
        "confusion": {t: {p: sum(a == t and b == p for a, b in pairs) for p in shown} for t in shown},
    }
