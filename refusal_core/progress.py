"""The one progress signature every long-running engine function takes.

``progress(done, total, **info)`` is called as work advances: ``done`` of ``total`` units
(batches, rows, trials, steps, percent). Some callers add what a display may show:
``best`` (the search's best value so far), the objective terms of an optimizer step
(``loss``, ``refusal_score``, ``kl``), a ``message`` (the organism build's stage), or a
``stage``: a short sentence saying what is being done now ("stage 2/4: 18 candidates x 16
prompts per set (150/174 candidates settled)"). A callback that only draws a bar ignores them.
The CLI's bar (``cli.common.progress_bar``) and the dashboard's (``pages._state``) show the
stage (else the message) and the time left, estimated by :class:`ProgressClock`.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Progress", "ProgressClock", "format_duration", "stage_text", "status_line"]


class Progress(Protocol):
    def __call__(self, done: int, total: int, /, **info: object) -> None: ...


def stage_text(info: dict) -> str:
    """What a display shows beside the bar: the ``stage``, else the ``message``, else nothing."""
    return str(info.get("stage") or info.get("message") or "")


def format_duration(seconds: float) -> str:
    """``"45 s"``, ``"3 min 05 s"`` or ``"1 h 02 min"``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {(seconds % 3600) // 60:02d} min"


class ProgressClock:
    """Remembers when work started and the last stage text; estimates the time left.

    The estimate is the time per unit so far times the units left, so it is only as good
    as the caller's promise that units cost about the same.
    """

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stage = ""

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self, done: int, total: int) -> float | None:
        if done <= 0 or total <= 0:
            return None
        return self.elapsed() * max(total - done, 0) / done

    def line(self, label: str, done: int, total: int, stage: str = "") -> str:
        if stage:
            self.stage = stage
        return status_line(label, done, total, self.stage, self.elapsed(), self.remaining(done, total))


def status_line(label: str, done: int, total: int, stage: str, elapsed: float, remaining: float | None) -> str:
    """``"Scoring: stage 2/4: 18 candidates x 16 prompts. 40% (1 min 10 s so far, about 1 min 45 s left)"``."""
    share = done / total if total > 0 else 1.0
    left = f", about {format_duration(remaining)} left" if remaining is not None and done < total else ""
    head = f"{label}: {stage}. " if stage else f"{label}: "
    return f"{head}{share:.0%} ({format_duration(elapsed)} so far{left})"
