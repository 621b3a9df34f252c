"""The one progress signature every long-running engine function takes.

``progress(done, total, **info)`` is called as work advances: ``done`` of ``total`` units
(batches, rows, trials, steps, percent). Some callers add what a display may show:
``best`` (the search's best value so far), the objective terms of an optimizer step
(``loss``, ``refusal_score``, ``kl``), or a ``message`` (the organism build's stage).
A callback that only draws a bar ignores them.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Progress"]


class Progress(Protocol):
    def __call__(self, done: int, total: int, /, **info: object) -> None: ...
