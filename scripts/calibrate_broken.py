"""Calibrate the broken detector on the bundled models' own baseline replies and ship the thresholds.

For each model: greedy 64-token replies to the first 48 harmful and 48 harmless *train*
prompts (unmodified model), their fluency statistics, and thresholds at the tails of those
(BrokenSettings: 1st/99th percentiles widened by fixed margins). Written, keyed by the
weights' sha256 and with provenance, to refusal_core/data/broken_thresholds.json.

    REFUSAL_ATLAS_CACHE=... .venv/bin/python scripts/calibrate_broken.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.judges.broken import SHIPPED_THRESHOLDS, BrokenSettings, calibrate  # noqa: E402
from refusal_core.models import BUNDLED_BASE, BUNDLED_ORGANISM, load_model  # noqa: E402
from refusal_core.organism import weights_sha256  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "refusal_core" / "data" / SHIPPED_THRESHOLDS


def main() -> None:
    table = json.loads(OUT.read_text()) if OUT.is_file() else {}
    for spec in (BUNDLED_ORGANISM, BUNDLED_BASE):
        loaded = load_model(spec)
        sha = weights_sha256(loaded.model)
        thresholds = calibrate(loaded, BrokenSettings(), progress=print, sha256=sha)
        table[sha] = json.loads(thresholds.to_json())
        print(spec, {k: v for k, v in table[sha].items() if k != "provenance"})
    OUT.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"Wrote {OUT}")


if __name__ == "__main__":
    main()
