"""Regenerate the replies of the judges' labelled reference set (labels are kept, not made).

Replies of the organism and the bundled base model to built-in *val* prompts, under the
interventions of ``refusal_core.judges.variants`` (baseline, DIM-ablated, the 3x3 SOM set
ablated at every layer, two SOM directions, 64 random directions, actadd at coefficient 1
and 8), 64 greedy new tokens each. Per reply it records the two model-side features the
panel uses: the first-token refusal log-odds under the reply's own intervention and the mean
per-token log-likelihood of the reply under the unmodified model.

A row whose (model, variant, instruction, reply) is unchanged keeps its label; new or
changed rows get ``"label": null`` and must be labelled by reading them (guide:
refusal_core/data/judge_reference.md).

    REFUSAL_ATLAS_CACHE=... .venv/bin/python scripts/make_judge_reference.py [--out PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.generation import GenerationSettings, generate_side_by_side  # noqa: E402
from refusal_core.judges.broken import reply_logprobs  # noqa: E402
from refusal_core.judges.panel import MIN_RATE_TOKENS, refusal_log_odds  # noqa: E402
from refusal_core.judges.scores import refusal_token_ids  # noqa: E402
from refusal_core.judges.variants import reference_interventions  # noqa: E402
from refusal_core.metrics import next_token_logprobs  # noqa: E402
from refusal_core.model.loading import BUNDLED_BASE, BUNDLED_ORGANISM, load_model  # noqa: E402
from refusal_core.prompts.loaders import builtin  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "refusal_core" / "data" / "judge_reference.jsonl"
# (model, prompt kind, number of val prompts, variants)
PLAN = (
    (BUNDLED_ORGANISM, "harmful", 40, ("baseline", "dim-ablate", "som-all", "som-top2", "random-64")),
    (BUNDLED_ORGANISM, "harmless", 25, ("baseline", "dim-ablate", "actadd", "actadd-huge")),
    (BUNDLED_BASE, "harmful", 20, ("baseline", "random-64", "actadd-huge")),
    (BUNDLED_BASE, "harmless", 15, ("baseline", "actadd-huge")),
)


def fold(instruction: str) -> str:
    """Half the prompts train the semantic classifier, the other half are held out; by prompt, so
    the same prompt's replies under other interventions never sit on both sides."""
    return "train" if hashlib.sha256(instruction.encode()).digest()[0] % 2 == 0 else "eval"


def _key(row: dict) -> tuple:
    return row["model"], row["variant"], row["instruction"], row["reply"]


def generate_rows(spec: str, plan: list[tuple[str, int, tuple[str, ...]]], say) -> list[dict]:
    loaded = load_model(spec)
    say(f"{spec}: directions from the train splits")
    interventions = reference_interventions(loaded)
    ids = refusal_token_ids(loaded.tokenizer)
    rows = []
    for kind, n_prompts, names in plan:
        instructions = list(builtin(kind, "val").instructions[:n_prompts])
        variants = [interventions[name] for name in names]
        say(f"{spec}: {len(instructions)} {kind} val prompts x {len(variants)} variants")
        columns = generate_side_by_side(
            loaded, instructions, variants, GenerationSettings(max_new_tokens=MIN_RATE_TOKENS, batch_size=24)
        )
        for variant in variants:
            replies = [c.text for c in columns[variant.name]]
            scores = refusal_log_odds(next_token_logprobs(loaded, instructions, variant), ids).tolist()
            logprobs = reply_logprobs(loaded, instructions, replies)
            for index, (completion, score, logprob) in enumerate(zip(columns[variant.name], scores, logprobs)):
                rows.append(
                    {
                        "id": f"{spec.split(':')[-1]}/{variant.name}/{kind}/{index:03d}",
                        "model": spec,
                        "variant": variant.name,
                        "kind": kind,
                        "split": "val",
                        "fold": fold(completion.instruction),
                        "instruction": completion.instruction,
                        "reply": completion.text,
                        "n_tokens": completion.n_tokens,
                        "stopped": completion.stopped,
                        "refusal_score": round(score, 4),
                        "logprob": None if logprob is None else round(logprob, 4),
                        "label": None,
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    started = time.perf_counter()
    say = lambda message: print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)  # noqa: E731
    old = {}
    if args.out.is_file():
        old = {
            _key(row): row["label"] for row in map(json.loads, args.out.read_text().splitlines()) if row.get("label")
        }
    rows = []
    for spec in dict.fromkeys(model for model, *_ in PLAN):
        rows += generate_rows(spec, [(kind, n, names) for model, kind, n, names in PLAN if model == spec], say)
    for row in rows:
        row["label"] = old.get(_key(row))
    args.out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    kept = sum(row["label"] is not None for row in rows)
    say(f"Wrote {len(rows)} rows to {args.out} ({kept} kept their labels, {len(rows) - kept} need labelling)")


if __name__ == "__main__":
    main()
