"""Calibrate the broken detector on the bundled models' own baseline replies and ship the thresholds.

For each bundled model: greedy 64-token replies to the first 48 harmful and 48 harmless
*train* prompts (unmodified model) and their log-likelihoods, stored in
refusal_core/data/broken_calibration.jsonl; thresholds at the tails of their fluency
statistics (BrokenSettings: 1st/99th percentiles widened by fixed margins), keyed by the
weights' sha256 with provenance, in refusal_core/data/broken_thresholds.json.
`--from-stored` recomputes the thresholds from the stored replies without a model;
`--sweep` prints, for a grid of repetition tails and margins, the broken recall and the share
of fluent replies flagged on the labelled reference set's *train* fold (how the defaults of
BrokenSettings.repeat_quantile and repeat_margin were chosen; the eval fold is not looked at).

    REFUSAL_ATLAS_CACHE=... .venv/bin/python scripts/calibrate_broken.py [--from-stored | --sweep]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.judges.broken import (  # noqa: E402
    SHIPPED_THRESHOLDS,
    BrokenSettings,
    baseline_replies,
    calibration_provenance,
    thresholds_from_replies,
)
from refusal_core.model.loading import BUNDLED_BASE, BUNDLED_ORGANISM  # noqa: E402

DATA = Path(__file__).resolve().parent.parent / "refusal_core" / "data"
REPLIES = DATA / "broken_calibration.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-stored", action="store_true", help="recompute thresholds from broken_calibration.jsonl")
    parser.add_argument("--sweep", action="store_true", help="print the train-fold grid for the repetition threshold")
    args = parser.parse_args()
    settings = BrokenSettings()
    if args.sweep:
        sweep()
        return
    old = json.loads((DATA / SHIPPED_THRESHOLDS).read_text()) if (DATA / SHIPPED_THRESHOLDS).is_file() else {}
    rows, table = [], {}
    if args.from_stored:
        rows = [json.loads(line) for line in REPLIES.read_text().splitlines()]
        for sha, entry in old.items():
            provenance = entry["provenance"]
            mine = [row for row in rows if row["model"] == provenance["model"]]
            table[sha] = json.loads(
                thresholds_from_replies(
                    mine, settings, {k: v for k, v in provenance.items() if k not in ("settings", "n_replies")}
                ).to_json()
            )
    else:
        from refusal_core.model.fingerprint import weights_sha256
        from refusal_core.model.loading import load_model

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


def sweep() -> None:
    import dataclasses

    from refusal_core.judges.broken import fluency_stats, is_broken
    from refusal_core.judges.reference import load_reference

    stored = [json.loads(line) for line in REPLIES.read_text().splitlines()]
    train = [row for row in load_reference() if row["fold"] == "train"]
    stats = fluency_stats(
        None, [r["instruction"] for r in train], [r["reply"] for r in train], logprobs=[r["logprob"] for r in train]
    )
    print("repeat_quantile repeat_margin  broken recall  fluent baseline flagged  fluent flagged  (train fold)")
    for tail in (0.01, 0.05, 0.10, 0.15, 0.20):
        for margin in (0.0, 0.1, 0.2):
            settings = dataclasses.replace(BrokenSettings(), repeat_quantile=tail, repeat_margin=margin)
            thresholds = {
                m: thresholds_from_replies([r for r in stored if r["model"] == m], settings, {})
                for m in {r["model"] for r in stored}
            }
            flagged = [is_broken(s, thresholds[r["model"]])[0] for r, s in zip(train, stats)]
            recall = _share([f for r, f in zip(train, flagged) if r["label"] == "broken"])
            baseline = _share(
                [f for r, f in zip(train, flagged) if r["label"] != "broken" and r["variant"] == "baseline"]
            )
            fluent = _share([f for r, f in zip(train, flagged) if r["label"] != "broken"])
            print(f"{tail:15.2f} {margin:13.1f} {recall:14.1%} {baseline:24.1%} {fluent:15.1%}")


def _share(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


if __name__ == "__main__":
    main()
