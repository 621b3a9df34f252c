"""Generate: replies side by side, baseline next to each intervention (ablation of chosen
directions or sets, activation addition), all in one batched generate call. Every column
shows its refused / complied / broken shares (the sidebar's judge) and the harmless
first-token KL of its intervention, and warns when more than 10% of its replies are broken."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from app_pages import _charts, _state
from app_pages._trace import trace_section
from refusal_core import damage
from refusal_core.activations.cache import content_key
from refusal_core.directions.base import DirectionError
from refusal_core.generation import GenerationSettings, generate_side_by_side
from refusal_core.interventions.spec import ABLATION_MODES, Intervention
from refusal_core.judges import MIN_RATE_TOKENS
from refusal_core.judges.verdict import LABEL_COLOURS, LABELS
from refusal_core.metrics import next_token_logprobs
from refusal_core.model.families import ModelLoadError
from refusal_core.selection.policy import CLOSEST_DIM, DIM_SET, SELECTED_DIM

st.title("Generate")
loaded = _state.require_model()
ws = _state.workspace()
MAX_CHECKBOXES = 24
COLUMNS_PER_ROW = 4
LAST = "generate_last_key"


def prompt_choices() -> list[str]:
    sets = {"harmful": ws.harmful, "harmless": ws.harmless}
    chosen = _state.chosen_prompts()
    options = []
    for kind in ("harmful", "harmless"):
        prompts = sets[kind] or chosen.get(kind)
        if prompts is not None:
            options += [f"[{kind}] {text}" for text in prompts.instructions]
    harmful_first = [o for o in options if o.startswith("[harmful]")][:2]
    harmless_first = [o for o in options if o.startswith("[harmless]")][:1]
    _state.keep_valid("generate_prompts", options)
    picked = st.multiselect(
        "Prompts from the sets", options, default=harmful_first + harmless_first, key="generate_prompts"
    )
    typed = st.text_area("Your own prompts (one per line)", key="generate_typed", height=80)
    return [p.split("] ", 1)[1] for p in picked] + [line.strip() for line in typed.splitlines() if line.strip()]


def ablation_layers() -> tuple[tuple[int, ...] | None, str]:
    cols = st.columns([1, 2, 1])
    every = cols[0].checkbox("Ablate at all layers", value=True, key="generate_all_layers")
    layers = None
    if not every:
        layers = tuple(
            cols[1].multiselect(
                "Ablation layers",
                list(range(loaded.n_layers)),
                default=list(range(loaded.n_layers)),
                key="generate_layers",
            )
        )
    mode = cols[2].selectbox(
        "Ablation mode",
        list(ABLATION_MODES),
        key="generate_mode",
        help="sequential: unit directions projected out one after another (Piras et al.); norm-preserving: "
        "projected out, then each residual vector rescaled to its norm before.",
    )
    return layers, mode


def no_sets_hint() -> None:
    """What a fresh page needs before it can switch a direction off."""
    st.info(
        "No direction sets yet, so only the baseline column can be generated. Compute activations and the DIM "
        "candidates first, then score them on the Directions page to get the set *Selected DIM*; its direction "
        "can be ablated here."
    )
    cols = st.columns(2)
    cols[0].page_link("app_pages/data.py", label="Compute activations (Data & activations)", icon=":material/database:")
    cols[1].page_link("app_pages/directions.py", label="Find a direction (Directions)", icon=":material/explore:")


def ticked(set_name: str, directions) -> bool:
    """Whether any box of this set is ticked (its expander then opens by itself)."""
    keys = [f"generate_set_{set_name}"] + [f"generate_dir_{set_name}_{name}" for name in directions.names]
    return any(st.session_state.get(key) is True for key in keys) or bool(
        st.session_state.get(f"generate_dirs_{set_name}")
    )


def ablation_variants(layers, mode) -> list:
    """One variant per checked direction, and one per set ablated as a whole."""
    variants = []
    if not ws.direction_sets:
        no_sets_hint()
    for set_name, directions in ws.direction_sets.items():
        with st.expander(f"{set_name} ({len(directions)} directions)", expanded=ticked(set_name, directions)):
            if st.checkbox(f"Ablate the whole set '{set_name}' together", key=f"generate_set_{set_name}"):
                variants.append(
                    Intervention(
                        name=f"ablate set {set_name}", ablate=directions.vectors, ablate_layers=layers, ablate_mode=mode
                    )
                )
            if len(directions) <= MAX_CHECKBOXES:
                picked = [name for name in directions.names if st.checkbox(name, key=f"generate_dir_{set_name}_{name}")]
            else:
                _state.keep_valid(f"generate_dirs_{set_name}", directions.names)
                picked = st.multiselect(
                    "Directions to ablate one at a time", list(directions.names), key=f"generate_dirs_{set_name}"
                )
            for name in picked:
                vector = directions.vectors[directions.names.index(name)]
                variants.append(
                    Intervention(
                        name=f"ablate {set_name}:{name}", ablate=vector[None], ablate_layers=layers, ablate_mode=mode
                    )
                )
    return variants


def conditional_variants() -> list:
    """The Categories page's conditional interventions (refusal off for chosen categories)."""
    return [item for name, item in ws.conditionals.items() if st.checkbox(name, key=f"generate_conditional_{name}")]


def default_actadd(options: list[tuple[str, str]]) -> int:
    """The selected DIM direction if there is one, else DIM at the last position and ~60% depth."""
    for wanted in (SELECTED_DIM, CLOSEST_DIM):
        for index, (set_name, _) in enumerate(options):
            if set_name == wanted:
                return index
    target = int(0.6 * loaded.n_layers)
    best, best_distance = 0, None
    for index, (set_name, name) in enumerate(options):
        record = ws.direction_sets[set_name].provenance[ws.direction_sets[set_name].names.index(name)]
        if set_name == DIM_SET and record.get("position") == -1:
            distance = abs(int(record["layer"]) - target)
            if best_distance is None or distance < best_distance:
                best, best_distance = index, distance
    return best


def actadd_variant() -> list:
    if not st.checkbox("Add a direction (ActAdd)", key="generate_actadd"):
        return []
    options = [(s, n) for s, d in ws.direction_sets.items() for n in d.names]
    if not options:
        st.info("No directions to add yet.")
        return []
    cols = st.columns([3, 1, 1])
    _state.follow_default("generate_actadd_direction", options[default_actadd(options)], options)
    set_name, name = cols[0].selectbox(
        "Direction",
        options,
        format_func=lambda o: f"{o[0]}:{o[1]}",
        key="generate_actadd_direction",
    )
    directions = ws.direction_sets[set_name]
    index = directions.names.index(name)
    own_layer = directions.provenance[index].get("layer")
    default_layer = (
        int(own_layer) if isinstance(own_layer, int) and 0 <= own_layer < loaded.n_layers else loaded.n_layers // 2
    )
    _state.follow_default("generate_actadd_layer", default_layer, range(loaded.n_layers))
    layer = int(cols[1].number_input("Layer", 0, loaded.n_layers - 1, key="generate_actadd_layer"))
    coeff = float(
        cols[2].number_input(
            "Coefficient",
            -1000.0,
            1000.0,
            1.0,
            step=0.5,
            key="generate_actadd_coeff",
            help="Raw vector times this; positive induces refusal, negative suppresses it.",
        )
    )
    return [
        Intervention(
            name=f"actadd {set_name}:{name} x{coeff:g} @L{layer}",
            actadd=directions.vectors[index],
            actadd_layer=layer,
            actadd_coeff=coeff,
        )
    ]


def settings_row():
    cols = st.columns(3)
    max_new = int(
        cols[0].number_input(
            "Max new tokens",
            1,
            1024,
            MIN_RATE_TOKENS,
            key="generate_max_new",
            help=f"Rates need {MIN_RATE_TOKENS}+ tokens: refusals that start late are missed at 24 to 32.",
        )
    )
    sample = cols[1].checkbox("Sample (else greedy)", key="generate_sample")
    temperature = float(
        cols[2].number_input("Temperature", 0.05, 5.0, 1.0, step=0.1, key="generate_temperature", disabled=not sample)
    )
    return GenerationSettings(max_new_tokens=max_new, do_sample=sample, temperature=temperature)


def run_key(prompts: list[str], variants: list, settings) -> str:
    parts = [ws.key, prompts, repr(settings), repr(_state.chat_format())]
    for v in variants:
        parts += [v.name, v.ablate_layers, v.ablate_mode, v.actadd_layer, v.actadd_coeff]
        parts += [v.ablate if v.ablate is not None else "-", v.actadd if v.actadd is not None else "-"]
        parts += [v.condition.key() if v.condition is not None else "-"]
    return content_key(*parts)


def kl_prompts() -> list[str]:
    """Harmless prompts for each column's KL: the activations' set, else the sidebar's, capped."""
    harmless = ws.harmless or _state.chosen_prompts().get("harmless")
    return list(harmless.instructions[: damage.KL_PROMPTS]) if harmless is not None else []


def judge(key: str, results: dict, variants: list) -> dict | None:
    """The columns' verdicts and KL under the sidebar's judge, computed once per generation and judge."""
    judged_key = f"{key}|{_state.judge_name()}"
    if judged_key not in ws.judged:
        harmless = kl_prompts()
        base = None
        try:
            with st.spinner(
                "Judging the replies (the first use on a model calibrates the broken detector, about a minute on CPU)"
            ):
                if harmless:
                    base = ws.unmodified_logprobs(
                        content_key("kl-base", harmless), lambda: next_token_logprobs(loaded, harmless)
                    )
                ws.store_judged(
                    judged_key,
                    damage.judge_columns(
                        loaded, results, variants, _state.judge_panel(), harmless, base, chat=_state.chat_format()
                    ),
                )
        except (ModelLoadError, OSError, ValueError) as err:
            st.error(f"Judging failed: {err} Choose another judge in the sidebar (substring needs no model).")
            return None
    return ws.judged[judged_key]


HEX = {"complied": "#2ca02c", "refused": "#d62728", "deflected": "#ff7f0e", "broken": "#7f7f7f"}
SHARES = tuple((label, HEX.get(label, "#9467bd")) for label in LABELS)


def shares_chart(columns: dict) -> go.Figure:
    """Stacked shares of each verdict per column, the KL written above each bar."""
    names = list(columns)
    chart = go.Figure()
    for share, colour in SHARES:
        values = [columns[n].rates[share] for n in names]
        chart.add_trace(
            go.Bar(
                x=names,
                y=values,
                name=share,
                marker_color=colour,
                text=[f"{v:.0%}" for v in values],
                textposition="inside",
            )
        )
    kls = [columns[n].kl for n in names]
    chart.add_trace(
        go.Scatter(
            x=names,
            y=[1.04] * len(names),
            mode="text",
            name="harmless KL",
            showlegend=False,
            text=["KL n/a" if kl is None else f"KL {kl:.3f}" for kl in kls],
        )
    )
    judge_name = next(iter(columns.values())).judge if columns else ""
    chart.update_layout(
        barmode="stack",
        yaxis=dict(range=[0, 1.1], title=f"share of replies ({judge_name} judge)"),
        height=300,
        margin=dict(t=20),
    )
    return chart


def shares_line(column) -> str:
    """The verdicts beside the headline: refused, deflected, broken (and any other verdict)."""
    rates = column.rates
    parts = [
        f"{label} {rates[label]:.0%}" if label != "broken" or column.judged_broken else "broken not judged"
        for label in LABELS
        if label != "complied"
    ]
    kl = "not measured (no harmless prompts)" if column.kl is None else f"{column.kl:.4f}"
    return " · ".join(parts) + f" · harmless KL {kl}"


def reply_caption(completion, verdict) -> str:
    flag = f":{LABEL_COLOURS[verdict.label]}[{verdict.label}]"
    if verdict.broken_why:
        flag += f" ({verdict.broken_why})"
    if verdict.disagree:
        flag += " · judges disagree"
    return f"{completion.instruction[:120]} — {flag}" + ("" if completion.stopped else " (cut at max tokens)")


def show_results(results: dict, columns: dict | None) -> None:
    if columns is not None:
        _charts.chart(shares_chart(columns), width="stretch", key="generate_rates")
    names = list(results)
    for start in range(0, len(names), COLUMNS_PER_ROW):
        row = names[start : start + COLUMNS_PER_ROW]
        for column, name in zip(st.columns(len(row)), row):
            with column:
                show_column(name, results[name], None if columns is None else columns[name])


def show_column(name: str, completions: list, judged) -> None:
    if judged is None:
        st.metric(name, "not judged")
    else:
        # The headline is what an attack is for: the share that complied coherently.
        st.metric(name, f"{judged.rates['complied']:.0%} complied")
        st.markdown(shares_line(judged))
        if judged.warning:
            st.warning(judged.warning)
    for row, completion in enumerate(completions):
        with st.container(border=True):
            st.caption(
                completion.instruction[:120] if judged is None else reply_caption(completion, judged.verdicts[row])
            )
            st.text(completion.text or "(empty reply)")


prompts = prompt_choices()
layers, mode = ablation_layers()
variants = [Intervention(name="baseline")] + ablation_variants(layers, mode) + conditional_variants() + actadd_variant()
settings = settings_row()
key = run_key(prompts, variants, settings)
if st.button(
    f"Generate {len(prompts)} prompts x {len(variants)} columns",
    type="primary",
    disabled=not prompts,
    key="generate_run",
):
    if key not in ws.generations:
        try:
            update = _state.progress_callback("Generating (one batch for all columns)")
            ws.store_generation(
                key, generate_side_by_side(loaded, prompts, variants, settings, _state.chat_format(), progress=update)
            )
        except (ValueError, DirectionError) as err:
            st.error(f"Generation failed: {err}")
    st.session_state[LAST] = key
if key in ws.generations:
    st.session_state[LAST] = key
    st.caption(
        f"Results for the settings above, kept in this session (generating again reuses them). Judge: {_state.judge_name()} (sidebar)."
    )
    judged_columns = judge(key, ws.generations[key], variants)
    show_results(ws.generations[key], judged_columns)
    trace_section(loaded, ws, key, ws.generations[key], variants, judged_columns)
elif st.session_state.get(LAST) in ws.generations:
    last = st.session_state[LAST]
    st.caption("Showing the last results; the settings above changed, press Generate to update.")
    show_results(ws.generations[last], ws.judged.get(f"{last}|{_state.judge_name()}"))
