"""Generate the replies of the judges' labelled set: many interventions, no verdicts.

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
        return list(builtin("harmful", "val").instructions) + list(
            builtin("harmful", "train").instructions[:N_HARMFUL_TRAIN]
        )
    return list(builtin("harmless", "val").instructions[: n or N_HARMLESS])


class Directions:
    """The directions the interventions use, computed on first use from the train splits."""

    def __init__(self, loaded) -> None:
        harmful, harmless = builtin("harmful", "train"), builtin("harmless", "train")
        self.harmful_acts = extract_activations(loaded, harmful.instructions)
        self.harmless_acts = extract_activations(loaded, harmless.instructions)
        self.provenance = {
            "model": loaded.spec,
            "data_hash": f"{harmful.content_hash()[:16]}:{harmless.content_hash()[:16]}",
            "params": {},
        }
        self.dims = dim_from_activations(self.harmful_acts, self.harmless_acts, self.provenance, [10, 16, 20, 22])
        self._cache: dict = {}

    def som(self, layer: int):
        if ("som", layer) not in self._cache:
            result = train_som(
                self.harmful_acts.block_input(layer, -1),
                self.harmless_acts.block_input(layer, -1),
                SomSettings(x=3, y=3, seed=0),
            )
            self._cache["som", layer] = som_direction_set(result, {**self.provenance, "layer": layer, "position": -1})
        return self._cache["som", layer]

    def clusters(self, layer: int):
        if ("cluster", layer) not in self._cache:
            vectors = representation_directions(
                self.harmful_acts.block_input(layer, -1), self.harmless_acts.block_input(layer, -1)
            )
            result = cluster_directions(vectors, k=4, seed=0)
            self._cache["cluster", layer] = cluster_direction_set(
                result, {**self.provenance, "layer": layer, "position": -1}
            )
        return self._cache["cluster", layer]


def intervention(name: str, found: Directions, d_model: int) -> Intervention:
    """The intervention called ``name``."""
    dims = found.dims
    d = lambda layer: [dim_name(-1, layer)]  # noqa: E731
    table = {
        "baseline": lambda: Intervention(name="baseline"),
        "base-baseline": lambda: Intervention(name="base-baseline"),
        "dim22-all": lambda: Intervention.from_directions("dim22-all", dims, d(22)),
        "base-dim22-all": lambda: Intervention.from_directions("base-dim22-all", dims, d(22)),
        "dim22-at22": lambda: Intervention.from_directions("dim22-at22", dims, d(22), layers=[22]),
        "dim22-layers12-22": lambda: Intervention.from_directions(
            "dim22-layers12-22", dims, d(22), layers=range(12, 23)
        ),
        "dim16-all": lambda: Intervention.from_directions("dim16-all", dims, d(16)),
        "dim20-at14-20": lambda: Intervention.from_directions("dim20-at14-20", dims, d(20), layers=range(14, 21)),
        "dim10-all": lambda: Intervention.from_directions("dim10-all", dims, d(10)),
        "som18-all": lambda: Intervention.from_directions("som18-all", found.som(18)),
        "som20-top2": lambda: Intervention.from_directions(
            "som20-top2", found.som(20), names=list(found.som(20).names[:2])
        ),
        "cluster18-all": lambda: Intervention.from_directions("cluster18-all", found.clusters(18)),
        "random-64": lambda: Intervention(
            name="random-64", ablate=torch.randn(64, d_model, generator=torch.Generator().manual_seed(0))
        ),
        "actadd-1": lambda: Intervention.from_direction_addition("actadd-1", dims, d(22)[0], 1.0, 22),
        "actadd-3": lambda: Intervention.from_direction_addition("actadd-3", dims, d(22)[0], 3.0, 22),
        "actadd-8": lambda: Intervention.from_direction_addition("actadd-8", dims, d(22)[0], 8.0, 22),
        "base-actadd-4": lambda: Intervention.from_direction_addition("base-actadd-4", dims, d(22)[0], 4.0, 22),
    }
    return table[name]()


# What the one-process mode generates per model: (prompt kind, intervention names).
PLAN = {
    BUNDLED_BASE: [("harmful", ["base-baseline", "base-dim22-all"]), ("harmless", ["base-baseline", "base-actadd-4"])],
    BUNDLED_ORGANISM: [
        (
            "harmful",
            [
                "baseline",
                "dim22-all",
                "dim22-at22",
                "dim22-layers12-22",
                "dim16-all",
                "dim20-at14-20",
                "dim10-all",
                "som18-all",
                "som20-top2",
                "cluster18-all",
                "random-64",
            ],
        ),
        ("harmless", ["baseline", "actadd-1", "actadd-3", "actadd-8"]),
    ],
}

# (model, prompt kind, split, first, last, intervention): what the checkpointed workers generate,
# in priority order. The labelled set also takes the earlier reference replies (--reference).
ITEMS = (
    ("organism", "harmful", "val", 0, 40, "dim22-at22"),
    ("organism", "harmful", "val", 0, 40, "dim16-all"),
    ("organism", "harmful", "val", 0, 40, "cluster18-all"),
    ("organism", "harmful", "val", 0, 40, "dim22-layers12-22"),
    ("organism", "harmful", "val", 0, 40, "dim20-at14-20"),
    ("organism", "harmful", "val", 0, 40, "dim10-all"),
    ("organism", "harmless", "val", 0, 25, "actadd-3"),
    ("organism", "harmful", "val", 40, 60, "dim22-all"),
    ("organism", "harmful", "val", 40, 60, "som18-all"),
    ("organism", "harmful", "val", 40, 60, "baseline"),
    ("organism", "harmful", "val", 40, 60, "dim22-at22"),
    ("organism", "harmful", "val", 40, 60, "cluster18-all"),
    ("organism", "harmful", "val", 40, 60, "dim16-all"),
    ("organism", "harmful", "train", 0, 20, "dim22-layers12-22"),
    ("organism", "harmful", "train", 0, 20, "dim20-at14-20"),
)


def run_items(items, out: Path, say, chunk: int = 16) -> None:
    """Generate the items' rows chunk by chunk, appending each chunk to ``out`` (resumable)."""
    done = set()
    if out.is_file():
        done = {
            (r["model"], r["intervention"], r["instruction"]) for r in map(json.loads, out.read_text().splitlines())
        }
    specs = {"organism": BUNDLED_ORGANISM, "base": BUNDLED_BASE}
    loaded, found, ids = None, None, None
    for model, kind, split, first, last, name in items:
        spec = specs[model]
        if loaded is None or loaded.spec != spec:
            loaded = load_model(spec)
            found = Directions(loaded)
            ids = refusal_token_ids(loaded.tokenizer)
        variant = intervention(name, found, loaded.d_model)
        instructions = [i for i in builtin(kind, split).instructions[first:last] if (spec, name, i) not in done]
        for start in range(0, len(instructions), chunk):
            part = instructions[start : start + chunk]
            firsts: dict[str, torch.Tensor] = {}
            settings = GenerationSettings(max_new_tokens=64, batch_size=chunk)
            columns = generate_side_by_side(loaded, part, [variant], settings, first_logprobs=firsts)
            scores = refusal_log_odds(firsts[name], ids).tolist()
            logprobs = reply_logprobs(loaded, part, [c.text for c in columns[name]], batch_size=chunk)
            with out.open("a") as handle:
                for completion, score, logprob in zip(columns[name], scores, logprobs):
                    handle.write(
                        json.dumps(
                            {
                                "model": spec,
                                "intervention": name,
                                "kind": kind,
                                "instruction": completion.instruction,
                                "reply": completion.text,
                                "n_tokens": completion.n_tokens,
                                "stopped": completion.stopped,
                                "refusal_score": round(score, 4),
                                "logprob": None if logprob is None else round(logprob, 4),
                            },
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
            say(f"{name} {kind}/{split}: {start + len(part)}/{len(instructions)}")


# The earlier reference set's interventions under this script's names.
REFERENCE_NAMES = {
    ("bundled:refusal-organism", "dim-ablate"): "dim22-all",
    ("bundled:refusal-organism", "som-all"): "som18-all",
    ("bundled:refusal-organism", "som-top2"): "som20-top2",
    ("bundled:refusal-organism", "actadd"): "actadd-1",
    ("bundled:refusal-organism", "actadd-huge"): "actadd-8",
    ("bundled:smollm2-135m-instruct", "baseline"): "base-baseline",
    ("bundled:smollm2-135m-instruct", "random-64"): "base-random-64",
    ("bundled:smollm2-135m-instruct", "actadd-huge"): "base-actadd-8",
}


def reference_rows(path: Path) -> list[dict]:
    """The earlier reference replies (their old labels dropped), under this script's intervention names."""
    rows = []
    for row in map(json.loads, path.read_text().splitlines()):
        name = REFERENCE_NAMES.get((row["model"], row["variant"]), row["variant"])
        rows.append(
            {
                "model": row["model"],
                "intervention": name,
                "kind": row["kind"],
                "instruction": row["instruction"],
                "reply": row["reply"],
                "n_tokens": row["n_tokens"],
                "stopped": row["stopped"],
                "refusal_score": row["refusal_score"],
                "logprob": row["logprob"],
                "source": "judge_reference.jsonl",
            }
        )
    return rows


def generate_rows(spec: str, say) -> list[dict]:
    loaded = load_model(spec)
    say(f"{spec}: directions from the train splits")
    ids = refusal_token_ids(loaded.tokenizer)
    rows = []
    found = Directions(loaded)
    for kind, names in PLAN[spec]:
        variants = [intervention(name, found, loaded.d_model) for name in names]
        instructions = prompts(kind)
        say(f"{spec}: {len(instructions)} {kind} prompts x {len(variants)} variants")
        firsts: dict[str, torch.Tensor] = {}
        columns = generate_side_by_side(
            loaded, instructions, variants, GenerationSettings(max_new_tokens=64, batch_size=32), first_logprobs=firsts
        )
        for variant in variants:
            replies = [c.text for c in columns[variant.name]]
            scores = refusal_log_odds(firsts[variant.name], ids).tolist()
            logprobs = reply_logprobs(loaded, instructions, replies, batch_size=16)
            for completion, score, logprob in zip(columns[variant.name], scores, logprobs):
                rows.append(
                    {
                        "model": spec,
                        "intervention": variant.name,
                        "kind": kind,
                        "instruction": completion.instruction,
                        "reply": completion.text,
                        "n_tokens": completion.n_tokens,
                        "stopped": completion.stopped,
                        "refusal_score": round(score, 4),
                        "logprob": None if logprob is None else round(logprob, 4),
                    }
                )
        say(f"{spec}: {kind} done, {len(rows)} rows")
    return rows


def write_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--blind",
        type=Path,
        default=None,
        help="also write the shuffled blind file (with --merge, or after generating)",
    )
    parser.add_argument(
        "--models", default="organism,base", help="which models to generate for (organism, base), comma-separated"
    )
    parser.add_argument(
        "--items",
        default=None,
        help="checkpointed mode: comma-separated indices of ITEMS, appended chunk by chunk to --out",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="with --merge: also take the earlier reference replies from this file",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        default=None,
        help="generate nothing: merge these unshuffled row files, shuffle, number and write --out and --blind",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    say = lambda message: print(f"[{time.perf_counter() - started:6.0f} s] {message}", flush=True)  # noqa: E731
    if args.items is not None:
        run_items([ITEMS[int(i)] for i in args.items.split(",")], args.out, say)
        return
    if args.merge:
        rows = [json.loads(line) for path in args.merge for line in path.read_text().splitlines() if line.strip()]
        if args.reference:
            rows += reference_rows(args.reference)
        unique: dict[tuple, dict] = {}
        for row in rows:  # workers may overlap; keep each (model, intervention, prompt) once
            unique.setdefault((row["model"], row["intervention"], row["instruction"]), row)
        rows = list(unique.values())
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
    # Rows already published in --out keep their ids and places; new rows are shuffled and
    # appended after them, so readers who started on the earlier file lose nothing.
    kept = [json.loads(line) for line in args.out.read_text().splitlines()] if args.merge and args.out.is_file() else []
    published = {(r["model"], r["intervention"], r["instruction"]) for r in kept}
    rows = [r for r in rows if (r["model"], r["intervention"], r["instruction"]) not in published]
    random.Random(27 + len(kept)).shuffle(rows)
    for number, row in enumerate(rows, len(kept)):
        row["id"] = f"r{number:04d}"
    rows = kept + rows
    write_atomic(args.out, rows)
    write_atomic(args.blind, [{"id": r["id"], "instruction": r["instruction"], "reply": r["reply"]} for r in rows])
    say(f"Wrote {len(rows)} rows to {args.out} and the blind file {args.blind}")


if __name__ == "__main__":
    main()
