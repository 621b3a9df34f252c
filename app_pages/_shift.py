"""The Manifold page's "under an intervention" section: choose an ablation or an activation
addition, recompute the activations with it in place, and draw each prompt before and after
in the page's own map (the SOM grid kept), with the separation before and after and an
animation over every layer."""

from __future__ import annotations

import streamlit as st

from app_pages import _charts, _state
from refusal_core.activations.cache import content_key
from refusal_core.directions.base import DirectionError
from refusal_core.interventions.spec import Intervention
from refusal_core.views import figures
from refusal_core.views.shift import intervened_activations, intervention_key, layer_shift

__all__ = ["intervention_controls", "shift_section"]


def intervention_controls(ws, n_layers: int, prefix: str) -> Intervention | None:
    """Ablate a set's chosen directions and/or add one direction: the Generate page's choices
    in one form (widget keys start with ``prefix``)."""
    options = [(s, n) for s, d in ws.direction_sets.items() for n in d.names]
    if not options:
        st.info("No direction sets yet: compute DIM candidates on the Data page or a SOM above first.")
        return None
    kind = st.radio("Intervention", ["ablate", "actadd", "both"], horizontal=True, key=f"{prefix}_kind")
    kwargs, names = {}, []
    if kind in ("ablate", "both"):
        sets = list(ws.direction_sets)
        set_name = st.selectbox("Set to ablate from", sets, key=f"{prefix}_set")
        directions = ws.direction_sets[set_name]
        _state.keep_valid(f"{prefix}_dirs", directions.names)
        picked = st.multiselect(
            "Directions ablated together (none: the whole set)", list(directions.names), key=f"{prefix}_dirs"
        )
        chosen = directions.select(picked) if picked else directions
        kwargs["ablate"] = chosen.vectors
        names.append(f"ablate {set_name}:{','.join(picked) if picked else 'all'}")
    if kind in ("actadd", "both"):
        cols = st.columns([3, 1, 1])
        set_name, name = cols[0].selectbox(
            "Direction to add", options, format_func=lambda o: f"{o[0]}:{o[1]}", key=f"{prefix}_add"
        )
        directions = ws.direction_sets[set_name]
        index = directions.names.index(name)
        own = directions.provenance[index].get("layer")
        default = int(own) if isinstance(own, int) and 0 <= own < n_layers else n_layers // 2
        layer = int(cols[1].number_input("Add at layer", 0, n_layers - 1, default, key=f"{prefix}_add_layer"))
        coeff = float(cols[2].number_input("Coefficient", -1000.0, 1000.0, 1.0, step=0.5, key=f"{prefix}_coeff"))
        kwargs.update(actadd=directions.vectors[index], actadd_layer=layer, actadd_coeff=coeff)
        names.append(f"add {set_name}:{name} x{coeff:g} @L{layer}")
    try:
        return Intervention(name="; ".join(names), **kwargs)
    except (ValueError, DirectionError) as err:
        st.error(f"This intervention cannot run: {err}")
        return None


def _after(loaded, ws, intervention: Intervention):
    """The intervened activations of both prompt sets, kept in the session (and the disk cache)."""
    key = content_key("shifted", ws.harmful_acts.key, ws.harmless_acts.key, intervention_key(intervention))
    if key not in ws.views:
        update = _state.progress_callback("Activations under the intervention")
        positions = ws.harmful_acts.positions
        harmful, warn_a = intervened_activations(
            loaded, ws.harmful.instructions, intervention, positions, progress=update
        )
        harmless, warn_b = intervened_activations(
            loaded, ws.harmless.instructions, intervention, positions, progress=update
        )
        for warning in (warn_a, warn_b):
            if warning:
                st.warning(warning)
        ws.store_view(key, (harmful, harmless))
    return key, ws.views[key]


def _separation_metrics(shift) -> None:
    before, after = shift.separation_before, shift.separation_after
    moves = shift.mean_moves()
    cols = st.columns(4)
    cols[0].metric(
        "DIM norm",
        f"{after.dim_norm:.3g}",
        f"{after.dim_norm - before.dim_norm:+.3g}",
        delta_color="off",
        help="Norm of the harmful mean minus the harmless mean at this layer, after (change from before).",
    )
    cols[1].metric(
        "Probe accuracy",
        f"{after.probe_accuracy:.0%}",
        f"{after.probe_accuracy - before.probe_accuracy:+.0%}",
        delta_color="off",
        help="A linear probe trained on the unmodified points, applied after: a fall means the "
        "intervention moved prompts across the boundary the model's own geometry drew.",
    )
    cols[2].metric(
        "Refitted probe (CV)",
        f"{after.cv_probe_accuracy:.0%}",
        help="A probe trained on the points after, cross-validated.",
    )
    ratio = moves["harmful_residual"] / max(moves["harmless_residual"], 1e-12)
    cols[3].metric(
        "Harmful / harmless move",
        f"{ratio:.2f}x",
        help=f"Mean distance moved in the residual stream: harmful "
        f"{moves['harmful_residual']:.3g}, harmless {moves['harmless_residual']:.3g}.",
    )


def shift_section(loaded, ws, layer: int, position: int, projection, som_overlay) -> None:
    """Draw the section; ``projection`` is the page's 2-D map of this layer and position,
    ``som_overlay(projection)`` the SOM traces placed in it (or an empty list)."""
    st.subheader("Under an intervention")
    st.caption(
        "The activations are recomputed with the intervention in place and placed in the map above, which is "
        "not refitted: a point's move is what the intervention did to that prompt."
    )
    intervention = intervention_controls(ws, loaded.n_layers, "shift")
    if intervention is None:
        return
    key = content_key("shift-run", ws.harmful_acts.key, intervention_key(intervention))
    if st.button("Recompute under the intervention", key="shift_run"):
        try:
            _after(loaded, ws, intervention)
            st.session_state["shift_last"] = key
        except (ValueError, DirectionError) as err:
            st.error(f"The intervened activations failed: {err}")
            return
    if st.session_state.get("shift_last") != key:
        st.caption("Press the button to see this intervention's effect.")
        return
    _, after = _after(loaded, ws, intervention)
    before = (ws.harmful_acts, ws.harmless_acts)
    shift = layer_shift(before, after, layer, position, projection=projection)
    prompts = list(ws.harmful.instructions + ws.harmless.instructions)
    _separation_metrics(shift)
    _charts.chart(
        figures.shift_figure(shift.as_dict(), prompts, som_overlay(projection)), width="stretch", key="shift_chart"
    )
    with st.expander("Every layer (animation; PCA fitted on each layer's unmodified points)"):
        if st.checkbox("Draw every layer", key="shift_animate"):
            frames = [layer_shift(before, after, other, position).as_dict() for other in range(1, loaded.n_layers)]
            _charts.chart(figures.shift_animation(frames, prompts), width="stretch", key="shift_animation")
    ws.store_view(
        "last_shift",
        {"model": loaded.spec, "intervention": intervention.name, "prompts": prompts, "shift": shift.as_dict()},
    )
