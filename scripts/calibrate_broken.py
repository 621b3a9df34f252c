"""Calibrate the broken detector on the bundled models' own baseline replies and ship the thresholds.

For each bundled model: greedy 64-token replies to the first 48 harmful and 48 harmless
*train* prompts (unmodified model) and their log-likelihoods, stored in
refusal_core/data/broken_calibration.jsonl; thresholds at the tails of their fluency
statistics (BrokenSettings: 1st/99th percentiles widened by fixed margins), keyed by the
weights' sha256 with provenance, in refusal_core/data/broken_thresholds.json.
`--from-stored` recomputes the thresholds from the stored replies without a model.

    REFUSAL_ATLAS_CACHE=... .venv/bin/python scripts/calibrate_broken.py [--from-stored]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.judges.broken import (  # noqa: E402
    SHIPPED_THRESHOLDS, BrokenSettings, baseline_replies, calibration_provenance, thresholds_from_replies,
)
from refusal_core.models import BUNDLED_BASE, BUNDLED_ORGANISM  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "refusal_core" / "data"
REPLIES = DATA / "broken_calibration.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-stored", action="store_true", help="recompute thresholds from broken_calibration.jsonl")
    args = parser.parse_args()
    settings = BrokenSettings()
    old = json.loads((DATA / SHIPPED_THRESHOLDS).read_text()) if (DATA / SHIPPED_THRESHOLDS).is_file() else {}
    rows, table = [], {}
    if args.from_stored:
        rows = [json.loads(line) for line in REPLIES.read_text().splitlines()]
        for sha, entry in old.items():
            provenance = entry["provenance"]
            mine = [row for row in rows if row["model"] == provenance["model"]]
            table[sha] = json.loads(thresholds_from_replies(mine, settings, {k: v for k, v in provenance.items() if k not in ("settings", "n_replies")}).to_json())
    else:
        from refusal_core.models import load_model
        from refusal_core.organism import weights_sha256

        for spec in (BUNDLED_ORGANISM, BUNDLED_BASE):
            started = time.perf_counter()
            loaded = load_model(spec)
            sha = weights_sha256(loaded.model)
            mine = baseline_replies(loaded, settings, progress=print)
            rows += mine
            provenance = calibration_provenance(spec, sha, settings, time.perf_counter() - started)
            table[sha] = json.loads(thresholds_from_replies(mine, settings, provenance).to_json())
        REPLIES.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    for entry in table.values():
        print(entry["provenance"]["model"], {k: v for k, v in entry.items() if k != "provenance"})
    (DATA / SHIPPED_THRESHOLDS).write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    print(f"Wrote {DATA / SHIPPED_THRESHOLDS}")


if __name__ == "__main__":
    main()
