"""How exactly the LoRA adapter reproduces the orthogonalized model on tiny MoE models.

For each family: a 2-layer random model (``tiny_family_folder``), two random directions, the
``lora`` export written to disk and loaded with ``PeftModel.from_pretrained``. Printed:

- ``max |dlogit|``: against the in-memory weight edit (``orthogonalized_weights``), float32;
- ``edit effect``: how much the edit moves the logits at all (the scale of the comparison);
- ``leak``: the worst ``|h.U| / |h|`` over the residual stream (after the embedding and each
  block but the last) of base + adapter in float64 with eager experts, and of the base model.

    OMP_NUM_THREADS=1 python scripts/moe_lora_exactness.py mixtral qwen3_moe gpt_oss
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.directions.base import DirectionSet  # noqa: E402
from refusal_core.exports.registry import ExportRequest, get_format  # noqa: E402
from refusal_core.interventions.weights import orthogonalized_weights  # noqa: E402
from refusal_core.model.loading import load_model  # noqa: E402
from refusal_core.model.tiny_families import tiny_family_folder  # noqa: E402

IDS = torch.tensor([[1, 5, 9, 30, 44, 7, 12, 3]])


def worst_leak(model, basis: torch.Tensor) -> float:
    with torch.no_grad():
        hidden = model(IDS, output_hidden_states=True).hidden_states[:-1]
    return max(float(((h @ basis).norm(dim=-1) / h.norm(dim=-1)).max()) for h in hidden)


def main() -> None:
    import peft
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="+")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(1)
    directions = DirectionSet(vectors=torch.randn(2, 64, generator=generator), names=("a", "b"), provenance=({}, {}))
    basis = torch.linalg.qr(directions.vectors.double().T).Q
    fmt = get_format("lora")
    print("| family | targeted parameters | max abs dlogit | edit effect | leak base | leak adapter |")
    print("|---|---|---|---|---|---|")
    for family in args.families:
        work = Path(tempfile.mkdtemp(prefix="moe-lora-"))
        folder = tiny_family_folder(family, work / "model")
        loaded = load_model(str(folder))
        out = fmt.write(ExportRequest(loaded, directions, work / "adapter", fmt.settings()))
        with torch.no_grad():
            base = loaded.model(IDS).logits
            with orthogonalized_weights(loaded.model, directions):
                expected = loaded.model(IDS).logits
            got = peft.PeftModel.from_pretrained(copy.deepcopy(loaded.model), str(out))(IDS).logits
        wide = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float64, experts_implementation="eager")
        adapted = peft.PeftModel.from_pretrained(copy.deepcopy(wide), str(out))
        targeted = json.loads((out / "adapter_config.json").read_text())["target_parameters"] or []
        leaves = sorted({name.rpartition(".")[2] for name in targeted})
        print(
            f"| {family} | {', '.join(leaves) or '-'} | {float((got - expected).abs().max()):.1e} "
            f"| {float((base - expected).abs().max()):.2f} | {worst_leak(wide, basis):.2f} "
            f"| {worst_leak(adapted, basis):.1e} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
