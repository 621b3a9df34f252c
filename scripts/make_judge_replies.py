"""Generate the replies of the judges' labelled set (issue 27): many interventions, no verdicts.

Replies of the organism and the bundled base model to the project's own *train* and *val*
prompts (never *test*), 64 greedy new tokens, under interventions of many strengths: the
unmodified models, the selected DIM direction ablated at every layer, at one layer and at a
partial layer range, DIM directions read at other layers, the 3x3 SOM set, two SOM
directions, a set of cluster directions (Park per-prompt directions clustered by angle),
64 random directions, and activation addition on harmless prompts at three coefficients.

Per reply it stores the model-side features the panel uses (first-token refusal log-odds
under the reply's own intervention; the reply's mean log-likelihood under the unmodified
model) so judges can be trained and measured without the model.

Writes two files: the full rows (``--out``, with the intervention) and the blind file for
the readers (``--blind``: id, instruction, reply only, shuffled), written atomically.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/make_judge_replies.py --out /work/notes/judge_replies_full.jsonl \
        --blind /work/notes/replies_to_label.jsonl
    # or in two processes, then merged:
    ... --models organism --out /tmp/organism.jsonl; ... --models base --out /tmp/base.jsonl
    ... --merge /tmp/organism.jsonl /tmp/base.jsonl --out ... --blind ...
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.activations.extract import extract_activations  # noqa: E402
from refusal_core.directions.clustering import cluster_direction_set, cluster_directions  # noqa: E402
from refusal_core.directions.dim import dim_from_activations, dim_name  # noqa: E402
from refusal_core.directions.per_prompt import representation_directions  # noqa: E402
from refusal_core.directions.som import SomSettings, som_direction_set, train_som  # noqa: E402
from refusal_core.generation import GenerationSettings, generate_side_by_side  # noqa: E402
from refusal_core.interventions.spec import Intervention  # noqa: E402
from refusal_core.judges.broken import reply_logprobs  # noqa: E402
from refusal_core.judges.scores import refusal_token_ids  # noqa: E402
from refusal_core.model.forward import refusal_log_odds  # noqa: E402
from refusal_core.model.loading import BUNDLED_BASE, BUNDLED_ORGANISM, load_model  # noqa: E402
from refusal_core.prompts.loaders import builtin  # noqa: E402

N_HARMFUL_TRAIN = 20  # harmful prompts: all 60 val + the first 20 train
N_HARMLESS = 50  # harmless prompts: the first 50 val


def prompts(kind: str, n: int | None = None) -> list[str]:
    if kind == "harmful":
        return list(builtin("harmful", "val").instructions) + list(builtin("harmful", "train").instructions[:N_HARMFUL_TRAIN])
    return list(builtin("harmless", "val").instructions[: n or N_HARMLESS])


def directions(loaded):
    harmful, harmless = builtin("harmful", "train"), builtin("harmless", "train")
    harmful_acts = extract_activations(loaded, harmful.instructions)
    harmless_acts = extract_activations(loaded, harmless.instructions)
    provenance = {"model": loaded.spec, "data_hash": f"{harmful.content_hash()[:16]}:{harmless.content_hash()[:16]}", "params": {}}
    dims = dim_from_activations(harmful_acts, harmless_acts, provenance, [10, 16, 20, 22])
    som = som_direction_set(train_som(harmful_acts.block_input(18, -1), harmless_acts.block_input(18, -1), SomSettings(x=3, y=3, seed=0)),
                            {**provenance, "layer": 18, "position": -1})
    som20 = som_direction_set(train_som(harmful_acts.block_input(20, -1), harmless_acts.block_input(20, -1), SomSettings(x=3, y=3, seed=0)),
                              {**provenance, "layer": 20, "position": -1})
    vectors = representation_directions(harmful_acts.block_input(18, -1), harmless_acts.block_input(18, -1))
    clusters = cluster_direction_set(cluster_directions(vectors, k=4, seed=0), {**provenance, "layer": 18, "position": -1})
    return dims, som, som20, clusters


def plan(loaded) -> list[tuple[str, list[Intervention]]]:
    """(prompt kind, interventions) for this model."""
    dims, som, som20, clusters = directions(loaded)
    d = lambda layer: [dim_name(-1, layer)]  # noqa: E731
    if loaded.spec == BUNDLED_BASE:
        return [
            ("harmful", [Intervention(name="base-baseline"), Intervention.from_directions("base-dim22-all", dims, d(22))]),
            ("harmless", [Intervention(name="base-baseline"),
                          Intervention.from_direction_addition("base-actadd-4", dims, d(22)[0], 4.0, 22)]),
        ]
    return [
        ("harmful", [
            Intervention(name="baseline"),
            Intervention.from_directions("dim22-all", dims, d(22)),
            Intervention.from_directions("dim22-at22", dims, d(22), layers=[22]),
            Intervention.from_directions("dim22-layers12-22", dims, d(22), layers=range(12, 23)),
            Intervention.from_directions("dim16-all", dims, d(16)),
            Intervention.from_directions("dim20-at14-20", dims, d(20), layers=range(14, 21)),
            Intervention.from_directions("dim10-all", dims, d(10)),
            Intervention.from_directions("som18-all", som),
            Intervention.from_directions("som20-top2", som20, names=list(som20.names[:2])),
            Intervention.from_directions("cluster18-all", clusters),
            Intervention(name="random-64", ablate=torch.randn(64, loaded.d_model, generator=torch.Generator().manual_seed(0))),
        ]),
        ("harmless", [
            Intervention(name="baseline"),
            Intervention.from_direction_addition("actadd-1", dims, d(22)[0], 1.0, 22),
            Intervention.from_direction_addition("actadd-3", dims, d(22)[0], 3.0, 22),
            Intervention.from_direction_addition("actadd-8", dims, d(22)[0], 8.0, 22),
        ]),
    ]


def generate_rows(spec: str, say) -> list[dict]:
    loaded = load_model(spec)
    say(f"{spec}: directions from the train splits")
    ids = refusal_token_ids(loaded.tokenizer)
    rows = []
    for kind, variants in plan(loaded):
        instructions = prompts(kind)
        say(f"{spec}: {len(instructions)} {kind} prompts x {len(variants)} variants")
        firsts: dict[str, torch.Tensor] = {}
        columns = generate_side_by_side(loaded, instructions, variants, GenerationSettings(max_new_tokens=64, batch_size=32),
                                        first_logprobs=firsts)
        for variant in variants:
            replies = [c.text for c in columns[variant.name]]
            scores = refusal_log_odds(firsts[variant.name], ids).tolist()
            logprobs = reply_logprobs(loaded, instructions, replies, batch_size=16)
            for index, (completion, score, logprob) in enumerate(zip(columns[variant.name], scores, logprobs)):
                rows.append({
                    "model": spec, "intervention": variant.name, "kind": kind, "instruction": completion.instruction,
                    "reply": completion.text, "n_tokens": completion.n_tokens, "stopped": completion.stopped,
                    "refusal_score": round(score, 4), "logprob": None if logprob is None else round(logprob, 4),
                })
        say(f"{spec}: {kind} done, {len(rows)} rows")
    return rows


def write_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--blind", type=Path, default=None, help="also write the shuffled blind file (with --merge, or after generating)")
    parser.add_argument("--models", default="organism,base", help="which models to generate for (organism, base), comma-separated")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="generate nothing: merge these unshuffled row files, shuffle, number and write --out and --blind")
    args = parser.parse_args()
    started = time.perf_counter()
    say = lambda message: print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)  # noqa: E731
    if args.merge:
        rows = [json.loads(line) for path in args.merge for line in path.read_text().splitlines() if line.strip()]
    else:
        specs = {"organism": BUNDLED_ORGANISM, "base": BUNDLED_BASE}
        rows = []
        for name in args.models.split(","):
            rows += generate_rows(specs[name], say)
            write_atomic(args.out.with_name(args.out.name + ".partial"), rows)
        if args.blind is None:
            write_atomic(args.out, rows)
            say(f"Wrote {len(rows)} unshuffled rows to {args.out}")
            return
    order = list(range(len(rows)))
    random.Random(27).shuffle(order)
    for number, index in enumerate(order):
        rows[index]["id"] = f"r{number:04d}"
    rows = [rows[i] for i in order]
    write_atomic(args.out, rows)
    write_atomic(args.blind, [{"id": r["id"], "instruction": r["instruction"], "reply": r["reply"]} for r in rows])
    say(f"Wrote {len(rows)} rows to {args.out} and the blind file {args.blind}")


if __name__ == "__main__":
    main()
