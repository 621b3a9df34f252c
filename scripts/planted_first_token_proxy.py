"""First-token proxy of the planted properties for a two-mechanisms delta, no generation:

    PYTHONPATH=. OMP_NUM_THREADS=2 .venv/bin/python scripts/planted_first_token_proxy.py DELTA [SPLIT]

The organism plus DELTA (a variant delta written by `organism build --variant two-mechanisms
--from-scratch --delta-out DELTA`); on the split (default val): the groups' difference cosine at
the mechanism layer, and the share of prompts whose greedy first reply token opens one of the
built-in refusals, unmodified, with the pooled train DIM ablated and with the planted pair
ablated, plus the harmless first-token KL under the planted pair. A quick screen for tuning;
the property check with generated replies is `organism planted`.
"""

import json
import sys
import time

import torch

from refusal_core.interventions.spec import Intervention
from refusal_core.model.loading import BUNDLED_BASE, load_model
from refusal_core.organism.delta import SHIPPED_DELTA, OrganismDelta, apply_organism_delta
from refusal_core.organism.planted import group_of
from refusal_core.organism.planted_batch import encode, last_states, run_rows
from refusal_core.prompts.loaders import builtin, refusal_replies

t0 = time.time()
loaded = load_model(BUNDLED_BASE)
apply_organism_delta(loaded.model, OrganismDelta.load(SHIPPED_DELTA))
d = OrganismDelta.load(sys.argv[1])
apply_organism_delta(loaded.model, d)
planted = torch.tensor(d.info["planted"]["vectors"])
L = d.info["planted"]["layer"]
tok = loaded.tokenizer
refusal_first = torch.tensor(sorted({tok(r, add_special_tokens=False)["input_ids"][0] for r in refusal_replies()}))
split = sys.argv[2] if len(sys.argv) > 2 else "val"
vh, vl = builtin("harmful", split), builtin("harmless", split)
vg = [group_of(c) for c in vh.categories]
sh, lh = last_states(loaded.model, tok, vh.instructions, layer=L)
sl, ll = last_states(loaded.model, tok, vl.instructions, layer=L)
c = sl.double().mean(0)
isA = torch.tensor([g == "A" for g in vg])
da = sh.double()[isA].mean(0) - c
db = sh.double()[~isA].mean(0) - c
th = (
    last_states(loaded.model, tok, builtin("harmful", "train").instructions, layer=L, logprobs=False)[0]
    .double()
    .mean(0)
)
tl = (
    last_states(loaded.model, tok, builtin("harmless", "train").instructions, layer=L, logprobs=False)[0]
    .double()
    .mean(0)
)
dim = (th - tl).float()


def first(instr, item):
    out = []
    with torch.no_grad():
        for i in range(0, len(instr), 32):
            b = encode(tok, instr[i : i + 32])
            o = run_rows(loaded.model, b, [item] * len(b))
            out.append(loaded.model.get_output_embeddings()(o.last_hidden_state[:, -1]).float().log_softmax(-1))
    return torch.cat(out)


def refused(lp):
    return round(float(torch.isin(lp.argmax(-1), refusal_first).float().mean()), 3)


dim_h = first(vh.instructions, Intervention(ablate=dim[None]))
pl_h = first(vh.instructions, Intervention(ablate=planted))
pl_l = first(vl.instructions, Intervention(ablate=planted))
kl = float((ll.exp() * (ll - pl_l)).sum(-1).mean())
ud = dim.double() / dim.double().norm()
print(
    json.dumps(
        dict(
            delta=sys.argv[1],
            split=split,
            group_cos=round(float(da @ db / da.norm() / db.norm()), 3),
            harmful=refused(lh),
            harmless=refused(ll),
            dim=refused(dim_h),
            dimA=refused(dim_h[isA]),
            dimB=refused(dim_h[~isA]),
            planted=refused(pl_h),
            planted_kl=round(kl, 3),
            dim_cos_a=round(float(ud @ planted[0].double()), 3),
            dim_cos_b=round(float(ud @ planted[1].double()), 3),
            seconds=round(time.time() - t0),
        )
    ),
    flush=True,
)
