"""Build the two-mechanisms variant from scratch and check it on the val split (a quick look
for choices; the test split is for reporting, with `organism planted --split test`).

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python scripts/planted_build_and_check.py STEPS LEARNING_RATE

Prints a progress line at most every 20 s (seconds since start), then the val check.
"""

from __future__ import annotations

import sys
import time

from refusal_core.directions.planted import load_planted
from refusal_core.model.loading import load_model
from refusal_core.organism.planted import PlantedSettings
from refusal_core.organism.planted_build import build_planted
from refusal_core.organism.planted_check import check_planted, format_check


def main() -> None:
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else PlantedSettings().steps
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else PlantedSettings().learning_rate
    started, last = time.time(), [0.0]

    def progress(done: int, total: int, message: str = "") -> None:
        if time.time() - last[0] > 20:
            print(f"{time.time() - started:6.0f}s {message}", flush=True)
            last[0] = time.time()

    settings = PlantedSettings(steps=steps, learning_rate=rate)
    target = build_planted(settings, progress=progress)
    print(f"built in {time.time() - started:.0f} s", flush=True)
    loaded = load_model("bundled:refusal-organism-two-mechanisms")
    result = check_planted(
        loaded,
        load_planted(target).vectors,
        settings.layer,
        split="val",
        max_new_tokens=24,
        judge="substring",
        max_harmful=24,
        max_harmless=16,
    )
    print(format_check(result), flush=True)


if __name__ == "__main__":
    main()
