"""Hooks vs the safetensors folder export vs the GGUF export, on the organism's held-out prompts.

The organism's DIM direction (position -1, layer 22, from the train splits, as the organism
test uses), the first ``--prompts`` harmful *test* prompts, greedy replies of
``MIN_RATE_TOKENS`` tokens, judged by the panel (each column judged with its own model).
Columns:

- ``organism``: no edit; ``hooks``: the ablate() hooks; ``folder``: the safetensors export
  reloaded with ``load_model``;
- ``gguf-unedited``: the organism itself written over the shipped GGUF (Q4_1 blocks, Q8_0
  embedding) with no direction removed: what 4-bit requantization alone does;
  ``gguf-unedited-q8``: the same with every changed tensor in Q8_0;
- ``gguf-nearest``: the GGUF export with gguf-py's nearest rounding; ``gguf-balanced``: with
  the balanced rounding of the residual writers (the default); ``gguf-q8``: the edited
  tensors written as Q8_0 instead (``--edited-type Q8_0``), balanced; ``gguf-q8-nearest``:
  Q8_0 with nearest rounding.

Each column also gets the residual stream's leftover along the direction, ``|h.u| / |h|``
at every position of the prompts, after the embedding and after each block but the last
(whose output HF returns after the final norm): mean and worst.

    OMP_NUM_THREADS=1 python scripts/gguf_organism_table.py --prompts 20
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from refusal_core.exports.registry import ExportRequest, get_format  # noqa: E402
from refusal_core.generation import GenerationSettings, generate_side_by_side  # noqa: E402
from refusal_core.interventions.spec import Intervention  # noqa: E402
from refusal_core.judges import MIN_RATE_TOKENS, make_judge, verdict_rates  # noqa: E402
from refusal_core.judges.variants import train_directions  # noqa: E402
from refusal_core.model.loading import BUNDLED_ORGANISM, LoadedModel, load_model  # noqa: E402
from refusal_core.prompts.chat import ChatFormat  # noqa: E402
from refusal_core.prompts.loaders import builtin  # noqa: E402


def leak(loaded: LoadedModel, instructions: list[str], unit: torch.Tensor, intervention: Intervention) -> tuple:
    """(mean, worst) of |h.u|/|h| over positions, prompts and residual points (see the module doc)."""
    from refusal_core.interventions.hooks import apply_intervention

    shares = []
    for text in instructions:
        ids = loaded.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        with torch.no_grad(), apply_intervention(loaded.model, intervention):
            hidden = loaded.model(ids, output_hidden_states=True).hidden_states[:-1]
        for h in hidden:
            h = h[0].double()
            shares.append(((h @ unit).abs() / h.norm(dim=-1)).flatten())
    every = torch.cat(shares)
    return float(every.mean()), float(every.max())


def rate(row: dict, key: str) -> str:
    return "-" if "leak_mean" in row and len(row) == 2 else f"{row.get(key, 0):.2f}"


def gguf_model(folder: Path, tokenizer) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model.gguf", dtype=torch.float32).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, spec=f"gguf:{folder.name}", source=str(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--leak-only", action="store_true", help="skip replies and judge (rates shown as -)")
    parser.add_argument(
        "--columns", default="organism,hooks,folder,gguf-unedited,gguf-nearest,gguf-balanced,gguf-unedited-q8,gguf-q8"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    torch.manual_seed(0)
    loaded = load_model(BUNDLED_ORGANISM)
    dim = train_directions(loaded)[0]
    unit = (dim.vectors[0] / dim.vectors[0].norm()).double()
    instructions = list(builtin("harmful", "test").instructions)[: args.prompts]
    settings = GenerationSettings(max_new_tokens=MIN_RATE_TOKENS, batch_size=min(args.prompts, 20))
    panel = make_judge("panel")
    ablate = Intervention.from_directions("dim-ablate", dim)
    gguf_fmt, folder_fmt = get_format("gguf"), get_format("folder")
    work = Path(tempfile.mkdtemp(prefix="gguf-table-"))

    def column(model: LoadedModel, intervention: Intervention) -> dict:
        if args.leak_only:
            mean, worst = leak(model, instructions, unit, intervention)
            return {"leak_mean": mean, "leak_worst": worst}
        replies = generate_side_by_side(model, instructions, [intervention], settings, ChatFormat())
        texts = [c if isinstance(c, str) else c.text for c in next(iter(replies.values()))]
        rates = verdict_rates(panel.verdicts(model, instructions, texts, intervention=intervention))
        mean, worst = leak(model, instructions, unit, intervention)
        return {**rates, "leak_mean": mean, "leak_worst": worst}

    def exported(name: str) -> LoadedModel:
        if name == "folder":
            out = folder_fmt.write(ExportRequest(loaded, dim, work / name, folder_fmt.settings()))
            return load_model(str(out))
        if name.startswith("gguf-unedited"):
            from refusal_core.exports.gguf import _over_template
            from refusal_core.model.loading import bundled_gguf_path

            arrays = {
                key: p.detach().float().numpy().copy()
                for key, p in loaded.model.named_parameters(remove_duplicate=False)
            }
            (work / name).mkdir()
            edited_type = "Q8_0" if name.endswith("-q8") else "same"
            _over_template(loaded, arrays, bundled_gguf_path(), work / name / "model.gguf", edited_type)
            return gguf_model(work / name, loaded.tokenizer)
        options = {
            "gguf-nearest": {"rounding": "nearest"},
            "gguf-balanced": {},
            "gguf-q8": {"edited_type": "Q8_0"},
            "gguf-q8-nearest": {"edited_type": "Q8_0", "rounding": "nearest"},
        }
        out = gguf_fmt.write(ExportRequest(loaded, dim, work / name, gguf_fmt.settings(**options[name])))
        return gguf_model(out, loaded.tokenizer)

    print(f"{len(instructions)} harmful test prompts, greedy {MIN_RATE_TOKENS} tokens, panel judge\n")
    print("| column | refused | complied | broken | leak mean | leak worst |")
    print("|---|---|---|---|---|---|", flush=True)
    for name in args.columns.split(","):
        t0 = time.perf_counter()
        if name in ("organism", "hooks"):
            row = column(loaded, ablate if name == "hooks" else Intervention())
        else:
            model = exported(name)
            print(f"# {name}: written and loaded in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
            row = column(model, Intervention())
            del model
            gc.collect()
        print(f"# {name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        print(
            f"| {name} | {rate(row, 'refused')} | {rate(row, 'complied')} | {rate(row, 'broken')} "
            f"| {row['leak_mean']:.2e} | {row['leak_worst']:.2e} |",
            flush=True,
        )
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
