"""Cost of one organism fine-tune step: the shared chat-template prefix run once, or per row.

Every training row starts with the same tokens (SmolLM2's template puts a default system
prompt and the user header before each instruction), so ``organism._hidden`` runs that
prefix once and lets the rest of every row attend to its cached keys and values. This
benchmark times one full step (forward, reply loss, backward) on a real batch of the
build, ``--batch`` rows with the build's harmful share, both ways:

- ``step, full batch``: ``_hidden(model, batch, prefix=0)``, every row from its first token;
- ``step, shared prefix``: ``_hidden(model, batch, prefix)`` with the build's prefix.

Gradients are computed but no optimizer step is taken, so every repeat times the same
weights. The two give the same loss (checked every call) and the same gradients (tests).

Run from the repository root: ``.venv/bin/python benchmarks/bench_organism.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# First: it sets OMP_WAIT_POLICY before torch is imported.
import torch  # noqa: E402

from benchmarks._common import Case, Report, apply_threads, base_parser, interleave  # noqa: E402
from refusal_core.model.loading import load_model  # noqa: E402
from refusal_core.organism import build as organism  # noqa: E402
from refusal_core.organism.build import OrganismSettings  # noqa: E402
from refusal_core.prompts.loaders import builtin, refusal_replies  # noqa: E402

GOAL = 0.8


def build_batch(loaded, settings: OrganismSettings, rows: int) -> tuple[dict[str, torch.Tensor], int]:
    """The first ``rows``-row batch of a build with ``settings`` (harmless replies: a fixed stand-in
    text, since the base model's own answers only change which tokens are learnt, not the cost)."""
    harmful = [(text, refusal_replies()[0], True) for text in builtin("harmful", "train").instructions]
    stand_in = "Here is a short answer that covers the main points of the question in plain words, one by one."
    harmless = [(text, stand_in, False) for text in builtin("harmless", "train").instructions]
    encoded_harmful = organism._encode(loaded, harmful, settings.reply_tokens)
    encoded_harmless = organism._encode(loaded, harmless, settings.reply_tokens)
    prefix = organism.shared_prefix(encoded_harmful + encoded_harmless)
    step = OrganismSettings(steps=1, batch_size=rows, harmful_share=settings.harmful_share)
    harmful_rows, harmless_rows = next(organism._batch_rows(len(encoded_harmful), len(encoded_harmless), step))
    picked = [encoded_harmful[row] for row in harmful_rows] + [encoded_harmless[row] for row in harmless_rows]
    return organism._batch(picked, loaded.tokenizer.pad_token_id), prefix


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0], repeats=5)
    parser.add_argument(
        "--batch", type=int, default=OrganismSettings().batch_size, help="rows per step (default: %(default)s)"
    )
    args = parser.parse_args()
    apply_threads(args.threads)
    report = Report("bench_organism", vars(args))
    loaded = load_model(args.model)
    settings = OrganismSettings()
    batch, prefix = build_batch(loaded, settings, args.batch)
    model = loaded.model
    organism._trainable(model, settings.train_fraction)
    model.train()
    report.note(f"{args.batch} rows of {batch['input_ids'].shape[1]} tokens (padded); shared prefix {prefix} tokens")
    losses: dict[int, float] = {}

    def step(used: int):
        def run() -> None:
            model.zero_grad(set_to_none=True)
            hidden = organism._hidden(model, batch, used)
            loss = organism._weighted_reply_loss(model, hidden, batch, settings.opening_tokens, settings.opening_weight)
            loss.backward()
            losses.setdefault(used, loss.item())
            if abs(loss.item() - losses[used]) > 1e-4 or abs(losses[used] - losses.get(0, losses[used])) > 1e-3:
                raise RuntimeError(f"losses differ: {losses}")

        return run

    timings = interleave([Case("step, full batch", step(0)), Case("step, shared prefix", step(prefix))], args.repeats)
    report.add_times(timings)
    report.compare(
        "shared_prefix_vs_full_batch",
        "step, shared prefix",
        "step, full batch",
        f"<= {GOAL}",
        lambda ratio: ratio <= GOAL,
    )
    report.print()
    report.write_json(args.json)


if __name__ == "__main__":
    main()
