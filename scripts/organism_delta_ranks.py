"""How low can the organism delta's rank go? Measured on the val splits, against the full fine-tune.

For each rank, the fine-tune's change of every weight matrix is cut to that rank and quantized
exactly as ``organism build --from-scratch`` ships it (``refusal_core.organism.delta``), applied
to the bundled weights, and compared with the full fine-tune:

- the delta's size and its relative error (Frobenius, over all matrices);
- KL(full || cut) of the first reply token on the harmful and harmless val prompts;
- with ``--val-ranks``, the organism report's five quantities on the val prompts (never test:
  this is where the rank is chosen), with the DIM direction at one fixed (position, layer)
  taken from each model's own train activations.

    REFUSAL_ATLAS_CACHE=/tmp/x/cache python scripts/organism_delta_ranks.py --tuned DIR --ranks 8,16,32,64

``--tuned`` is a model directory holding a full fine-tune (a build before the low-rank cut).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.directions.dim import dim_name  # noqa: E402
from refusal_core.interventions.spec import Intervention  # noqa: E402
from refusal_core.metrics import evaluate_kl, kl_divergence, next_token_logprobs  # noqa: E402
from refusal_core.model.fingerprint import weights_sha256  # noqa: E402
from refusal_core.model.loading import BUNDLED_BASE, LoadedModel, load_model  # noqa: E402
from refusal_core.organism.delta import apply_organism_delta, make_delta  # noqa: E402
from refusal_core.organism.report import dim_candidates, refusal_rates  # noqa: E402
from refusal_core.prompts.loaders import builtin  # noqa: E402


def relative_error(delta, base_state: dict, tuned_state: dict) -> float:
    """sqrt(sum ||D - D_cut||^2 / sum ||D||^2) over the delta's matrices."""
    missed, total = 0.0, 0.0
    for name, factors in delta.factors.items():
        diff = tuned_state[name].double() - base_state[name].double()
        missed += (diff - factors.materialize().double()).square().sum().item()
        total += diff.square().sum().item()
    return (missed / total) ** 0.5


def val_quantities(loaded: LoadedModel, position: int, layer: int, max_new_tokens: int) -> dict:
    """The report's five quantities on the val splits for the DIM direction at (position, layer)."""
    candidates = dim_candidates(
        loaded, builtin("harmful", "train"), builtin("harmless", "train"), last_position_only=position == -1
    )
    direction = candidates.select([dim_name(position, layer)])
    ablation = Intervention.from_directions("ablate", direction)
    addition = Intervention.from_direction_addition("actadd", direction, direction.names[0], 1.0, layer)
    harmful, harmless = builtin("harmful", "val").instructions, builtin("harmless", "val").instructions
    harmful_rates = refusal_rates(loaded, harmful, [Intervention(), ablation], max_new_tokens)
    harmless_rates = refusal_rates(loaded, harmless, [Intervention(), addition], max_new_tokens)
    return {
        "harmful": harmful_rates["baseline"],
        "harmless": harmless_rates["baseline"],
        "ablated": harmful_rates["ablate"],
        "abl_kl": evaluate_kl(loaded, harmless, ablation).summary["mean"],
        "actadd": harmless_rates["actadd"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tuned", required=True, help="model directory of a full fine-tune")
    parser.add_argument("--ranks", default="8,16,32,64")
    parser.add_argument(
        "--val-ranks",
        default="",
        help="ranks (comma-separated) that also get the report's quantities on val, "
        "with the full fine-tune's for comparison (minutes each on a CPU; default: none)",
    )
    parser.add_argument("--layer", type=int, default=22, help="layer of the fixed DIM direction (default: %(default)s)")
    parser.add_argument("--position", type=int, default=-1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    base = load_model(BUNDLED_BASE)
    base_state = {name: tensor.clone() for name, tensor in base.model.state_dict().items()}
    base_sha = weights_sha256(base.model)
    tuned = load_model(args.tuned)
    tuned_state = tuned.model.state_dict()
    changed = [name for name in base_state if not torch.equal(base_state[name], tuned_state[name])]
    print(
        f"{len(changed)} of {len(base_state)} tensors changed: {sum(tuned_state[n].ndim == 2 for n in changed)} matrices, "
        f"{sum(tuned_state[n].ndim != 2 for n in changed)} vectors; embeddings changed: "
        f"{any('embed' in n or 'lm_head' in n for n in changed)}",
        flush=True,
    )
    val = {kind: builtin(kind, "val").instructions for kind in ("harmful", "harmless")}
    val_ranks = {int(r) for r in args.val_ranks.split(",") if r.strip()}
    full_logprobs = {kind: next_token_logprobs(tuned, prompts) for kind, prompts in val.items()}
    print(
        f"\nVal splits ({len(val['harmful'])} harmful, {len(val['harmless'])} harmless). KL: first reply token, KL(full || cut). "
        f"Report quantities (ranks in --val-ranks): {args.max_new_tokens}-token greedy replies, DIM direction at position "
        f"{args.position}, layer {args.layer}"
    )
    print(
        f"{'rank':>5} {'MB':>6} {'rel.err':>7} {'KL harmful':>10} {'KL harmless':>11} | {'harmful':>7} {'harmless':>8} {'ablated':>7} {'abl KL':>7} {'actadd':>7}"
    )

    def row(rank: str, size: str, error: str, kls: list[str], quantities: dict | None) -> None:
        shown = (
            ""
            if quantities is None
            else (
                f"{quantities['harmful']:7.1%} {quantities['harmless']:8.1%} {quantities['ablated']:7.1%} "
                f"{quantities['abl_kl']:7.4f} {quantities['actadd']:7.1%}"
            )
        )
        print(f"{rank:>5} {size:>6} {error:>7} {kls[0]:>10} {kls[1]:>11} | {shown}", flush=True)

    if val_ranks:
        row("full", "", "", ["", ""], val_quantities(tuned, args.position, args.layer, args.max_new_tokens))
    del tuned
    for rank in [int(r) for r in args.ranks.split(",")]:
        base.model.load_state_dict(base_state)
        delta = make_delta(base_state, tuned_state, rank, base_sha)
        apply_organism_delta(base.model, delta, check=False)
        kls = [
            kl_divergence(full_logprobs[kind], next_token_logprobs(base, prompts)).mean().item()
            for kind, prompts in val.items()
        ]
        quantities = val_quantities(base, args.position, args.layer, args.max_new_tokens) if rank in val_ranks else None
        row(
            str(rank),
            f"{delta.n_bytes / 1e6:.1f}",
            f"{relative_error(delta, base_state, tuned_state):.3f}",
            [f"{kl:.4f}" for kl in kls],
            quantities,
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
