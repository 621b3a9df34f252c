"""Check that the family work left the llama path's weight edits bit-for-bit as before.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/check_llama_edit_unchanged.py [--base 92caa75] [--model bundled:refusal-organism]

Runs ``orthogonalized_weights`` of this tree and of ``interventions/weights.py`` as it was
at ``--base`` (read with ``git show``; it reads the same writer list) on the same model and
two random directions, and counts the parameters whose edited tensors differ. Also prints
the residual self-check's worst leak on the edited model.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from refusal_core.interventions import weights  # noqa: E402
from refusal_core.model.loading import load_model  # noqa: E402
from refusal_core.model.probe import residual_leak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="92caa75")
    parser.add_argument("--model", default="bundled:refusal-organism")
    args = parser.parse_args()
    source = subprocess.run(
        ["git", "show", f"{args.base}:refusal_core/interventions/weights.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    old = types.ModuleType("weights_at_base")
    exec(compile(source, f"{args.base}:weights.py", "exec"), old.__dict__)  # noqa: S102 - our own repository's file
    model = load_model(args.model).model
    directions = torch.randn(2, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with weights.orthogonalized_weights(model, directions):
        now = {name: tensor.clone() for name, tensor in model.state_dict().items()}
        leak = residual_leak(model, directions).worst
    with old.orthogonalized_weights(model, directions):
        before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    differ = [name for name in now if not torch.equal(now[name], before[name])]
    print(
        f"{args.model}: {len(differ)} of {len(now)} parameters differ from the edit at {args.base}; "
        f"worst residual leak after the edit {leak:.2e}"
    )
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main())
