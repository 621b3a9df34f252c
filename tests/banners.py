"""Section banners in source files: a title comment between two lines of dashes, or a
dashed line followed by a title comment."""

from __future__ import annotations

import re

DASHES = re.compile(r"^\s*#\s*-{10,}\s*$")
TITLE = re.compile(r"^\s*#\s*\S")


def banners(lines: list[str]) -> list[tuple[int, int]]:
    """``(first, last)`` line indices (inclusive) of every banner."""
    found, i = [], 0
    while i < len(lines):
        if (
            DASHES.match(lines[i])
            and i + 1 < len(lines)
            and TITLE.match(lines[i + 1])
            and not DASHES.match(lines[i + 1])
        ):
            last = i + 2 if i + 2 < len(lines) and DASHES.match(lines[i + 2]) else i + 1
            found.append((i, last))
            i = last + 1
        else:
            i += 1
    return found


def empty_banners(text: str) -> list[int]:
    """1-based line numbers of banners with nothing but blank lines before the next banner or the end."""
    lines = text.splitlines()
    spans = banners(lines)
    empty = []
    for index, (first, last) in enumerate(spans):
        stop = spans[index + 1][0] if index + 1 < len(spans) else len(lines)
        if all(not line.strip() for line in lines[last + 1 : stop]):
            empty.append(first + 1)
    return empty
