"""Shared machinery of the benchmarks: interleaved timing, a result table, ratio lines, JSON.

The benchmark machine is small and shared, so absolute times drift by large factors from
one minute to the next. Every comparison is therefore measured *interleaved*: each repeat
runs every case once, and the order of the cases is rotated from one repeat to the next
(A,B,C / B,C,A / ...), so slow spells hit all cases alike. The headline numbers are
ratios of two medians from the same run.

Each call is timed twice: wall clock, and the CPU time of this process (all its threads;
``time.process_time``). Beside the ratio of wall-clock medians, each RATIO line gives the
median of the per-repeat ratios, the ratio of the fastest samples and the ratio of CPU
times: when they agree, the number is sound; when they do not, the run was too noisy.

Two settings keep other tenants' load from swamping the measurement: one thread for torch
and BLAS by default (``--threads``), and ``OMP_WAIT_POLICY=PASSIVE`` (set below, before
torch starts OpenMP). Both are explained where they are set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# Must happen before torch is imported (it starts OpenMP). With the default ACTIVE policy
# an OpenMP thread that reaches a barrier spins; when another tenant holds one of the two
# cores, the partner thread is descheduled and the spinning thread burns its time slice,
# so one decoding step can take 3x to 50x longer, at random. PASSIVE threads sleep instead.
# Export OMP_WAIT_POLICY=ACTIVE to measure the default behaviour.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = "bundled:smollm2-135m-instruct"

__all__ = [
    "DEFAULT_MODEL",
    "REPO_ROOT",
    "Case",
    "Report",
    "Timings",
    "apply_threads",
    "base_parser",
    "interleave",
    "median",
    "timed",
]


def base_parser(description: str, repeats: int) -> argparse.ArgumentParser:
    """The options every benchmark takes: model, repeats, threads and a JSON output path."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model spec for load_model (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repeats per case (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for torch and BLAS; 1 (default) gives the steadiest timings on a shared machine, 0 = their own choice",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser


def apply_threads(threads: int) -> None:
    """Limit torch and the BLAS/OpenMP pools loaded so far to ``threads``; 0 keeps the defaults.

    numpy's and scipy's OpenBLAS busy-wait like OpenMP does (OMP_WAIT_POLICY does not reach
    them): on this 2-core machine, shared with other tenants, a 512 x 576 PCA took 3 s with
    their default 2 threads and 0.07 s with one. Call again after importing a library that
    loads its own pool (scipy does, lazily).
    """
    if threads <= 0:
        return
    torch.set_num_threads(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


@dataclass
class Case:
    """One thing to time. ``setup`` runs before every timed call and is not timed."""

    name: str
    run: Callable[[], object]
    setup: Callable[[], None] | None = None


@dataclass
class Timings:
    """Per-case samples in seconds, in repeat order: wall clock and process CPU time."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, wall: float, cpu: float) -> None:
        self.wall.setdefault(name, []).append(wall)
        self.cpu.setdefault(name, []).append(cpu)

    def summed(self, name: str, parts: list[str]) -> None:
        """Add case ``name`` whose sample ``r`` is the sum of the parts' samples ``r``."""
        for wall, cpu in zip(zip(*(self.wall[p] for p in parts)), zip(*(self.cpu[p] for p in parts))):
            self.add(name, sum(wall), sum(cpu))

    def difference(self, name: str, total: str, part: str) -> None:
        """Add case ``name`` = ``total`` minus ``part``, sample by sample (floored at 1 ns)."""
        for wall, cpu, part_wall, part_cpu in zip(self.wall[total], self.cpu[total], self.wall[part], self.cpu[part]):
            self.add(name, max(wall - part_wall, 1e-9), max(cpu - part_cpu, 1e-9))


def timed(run: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def interleave(cases: list[Case], repeats: int, warmup: int = 1) -> Timings:
    """``repeats`` timed calls of every case, measured interleaved.

    Every case first runs ``warmup`` untimed calls (first calls pay one-off costs: lazy
    imports, allocator growth, hooks transformers installs on first use). Then repeat ``r``
    runs all cases once, starting at case ``r mod n``, so no case is always first or last.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}.")
    for _ in range(warmup):
        for case in cases:
            if case.setup:
                case.setup()
            case.run()
    timings = Timings()
    for repeat in range(repeats):
        shift = repeat % len(cases)
        for case in cases[shift:] + cases[:shift]:
            if case.setup:
                case.setup()
            wall, cpu, _ = timed(case.run)
            timings.add(case.name, wall, cpu)
    return timings


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def _goal_text(goal: str, met: bool | None) -> str:
    if met is None:
        return f"goal {goal}" if goal else "no goal"
    return f"goal {goal}, {'met' if met else 'MISSED'}"


@dataclass
class Report:
    """Times, plain values and ratios of one benchmark run, printed as a table and RATIO lines."""

    script: str
    args: dict
    times: dict[str, dict] = field(default_factory=dict)
    values: dict[str, dict] = field(default_factory=dict)
    ratios: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    loadavg_start: tuple[float, ...] = field(default_factory=lambda: _loadavg())

    def add_times(self, timings: Timings, per: dict[str, float] | None = None) -> None:
        """Record every case of ``timings``; ``per[name]`` gives a per-unit time (e.g. per token)."""
        for name, wall in timings.wall.items():
            cpu = timings.cpu[name]
            entry = {
                "median_s": median(wall),
                "min_s": min(wall),
                "cpu_median_s": median(cpu),
                "samples_s": wall,
                "cpu_samples_s": cpu,
            }
            if per and name in per:
                entry["median_per_unit_ms"] = 1000 * median(wall) / per[name]
            self.times[name] = entry

    def add_value(self, name: str, value: float, unit: str, goal: str = "", met: bool | None = None) -> None:
        self.values[name] = {"value": value, "unit": unit, "goal": goal, "met": met}

    def compare(
        self, name: str, top: str, bottom: str, goal: str = "", check: Callable[[float], bool] | None = None
    ) -> float:
        """Record the ratio of recorded cases ``top / bottom`` (wall medians) and return it.

        Recorded alongside: the median of the per-repeat ratios (samples ``r`` of both cases
        ran next to each other, so a slow spell longer than one repeat cancels out), the
        ratio of the fastest samples and the ratio of CPU-time medians. ``check`` decides
        whether the wall-median ratio meets the goal.
        """
        a, b = self.times[top], self.times[bottom]
        value = a["median_s"] / b["median_s"]
        self.ratios[name] = {
            "value": value,
            "paired_median": median([x / y for x, y in zip(a["samples_s"], b["samples_s"])]),
            "of_minimums": a["min_s"] / b["min_s"],
            "of_cpu_medians": a["cpu_median_s"] / b["cpu_median_s"],
            "top": top,
            "bottom": bottom,
            "goal": goal,
            "met": check(value) if check else None,
        }
        return value

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"note: {text}", flush=True)

    def print(self) -> None:
        print()
        print(f"== {self.script}  ({_environment_line()})")
        if self.times:
            print(f"{'case':<38} {'median s':>9} {'min s':>9} {'cpu s':>9} {'n':>3} {'ms/unit':>8}")
            for name, entry in self.times.items():
                per_unit = entry.get("median_per_unit_ms")
                unit_text = f"{per_unit:8.1f}" if per_unit is not None else f"{'':>8}"
                print(
                    f"{name:<38} {entry['median_s']:9.3f} {entry['min_s']:9.3f} {entry['cpu_median_s']:9.3f} "
                    f"{len(entry['samples_s']):3d} {unit_text}"
                )
        for name, entry in self.values.items():
            print(f"VALUE {name} = {entry['value']:.2f} {entry['unit']} ({_goal_text(entry['goal'], entry['met'])})")
        print(f"load average: start {_fmt_load(self.loadavg_start)}, end {_fmt_load(_loadavg())}")
        for name, entry in self.ratios.items():
            steadier = (
                f"paired {_fmt_ratio(entry['paired_median'])}, of minimums {_fmt_ratio(entry['of_minimums'])}, "
                f"of CPU time {_fmt_ratio(entry['of_cpu_medians'])}"
            )
            print(
                f"RATIO {name} = {_fmt_ratio(entry['value'])} ({_goal_text(entry['goal'], entry['met'])}; {steadier})"
            )

    def write_json(self, path: Path | None) -> None:
        if path is None:
            return
        payload = {
            "script": self.script,
            "args": {key: str(value) if isinstance(value, Path) else value for key, value in self.args.items()},
            "environment": _environment(),
            "loadavg_start": self.loadavg_start,
            "loadavg_end": _loadavg(),
            "times": self.times,
            "values": self.values,
            "ratios": self.ratios,
            "notes": self.notes,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")


def _fmt_ratio(value: float) -> str:
    """Two decimals, or four for ratios too small to show with two."""
    return f"{value:.2f}" if value >= 0.1 else f"{value:.4f}"


def _loadavg() -> tuple[float, ...]:
    try:
        return tuple(round(value, 2) for value in os.getloadavg())
    except OSError:
        return ()


def _fmt_load(load: tuple[float, ...]) -> str:
    return "/".join(f"{value:.1f}" for value in load) if load else "n/a"


def _environment() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }


def _environment_line() -> str:
    env = _environment()
    return (
        f"torch {env['torch']}, {env['torch_threads']} threads, {env['cpu_count']} cpus, "
        f"OMP_WAIT_POLICY={env['omp_wait_policy']}"
    )
