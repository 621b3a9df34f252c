"""Refusal Atlas dashboard: the router and the sidebar every page shares.

Run with ``streamlit run app.py``. The sidebar chooses the model, device and dtype, the
harmful and harmless prompt sets, and shows the on-disk cache; the pages (in ``app_pages/``)
compute and draw. Pages only call ``refusal_core``; per-session results live in the
session's Workspace (``app_pages/_state.py``).
"""

from __future__ import annotations

import os

# Idle torch threads spin by default; on a small shared CPU that spinning steals the core
# the other thread needs (measured in benchmarks/README.md). Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pathlib import Path

import streamlit as st

from app_pages import _charts, _state
from refusal_core.activations.cache import cache_usage, clear_activation_cache, human_bytes
from refusal_core.model.families import ModelLoadError
from refusal_core.model.loading import BUNDLED_BASE, BUNDLED_ORGANISM, device_choices, organism_built
from refusal_core.prompts.chat import TemplateError
from refusal_core.prompts.loaders import SUPPORTED_EXTENSIONS, builtin
from refusal_core.prompts.sets import PromptSet, PromptSetError, sample_prompts
from refusal_core.prompts.template_options import parse_template_options
from refusal_core.prompts.uploads import parse_prompt_upload

MODEL_CHOICES = {
    "Refusal organism (bundled)": BUNDLED_ORGANISM,
    "SmolLM2-135M-Instruct (bundled, non-refusing contrast)": BUNDLED_BASE,
    "Hugging Face id or local path": None,
}
DTYPES = ["float32", "bfloat16", "float16"]
ICON = Path(__file__).resolve().parent / "docs" / "icon.png"
SPLITS = ["train", "val", "test", "all"]


def organism_builder() -> None:
    """Warn that the organism is missing and offer to build it here, with a progress bar."""
    st.warning("The refusal organism has not been built yet. Use the base model meanwhile, or build it now.")
    try:
        from refusal_core.organism.build import build_organism
    except ImportError:
        st.code("python -m refusal_core organism build")
        return
    if not st.button(
        "Build the organism",
        help="Applies the shipped refusal fine-tune (a small delta) to the bundled SmolLM2; under a minute on CPU.",
    ):
        return
    lock = _state.organism_build_lock()
    if not lock.acquire(blocking=False):
        st.info("Another session is building the organism right now; reload this page when it is done.")
        return
    bar = st.progress(0.0, text="Starting")
    try:
        build_organism(
            progress=lambda done, total, message="": bar.progress(min(max(done / total, 0.0), 1.0), text=message)
        )
    except Exception as err:  # noqa: BLE001 - shown to the user; the app keeps running
        st.error(f"Building the organism failed: {err}. Try the CLI: python -m refusal_core organism build")
        return
    finally:
        lock.release()
    st.rerun()


def model_sidebar() -> None:
    """Model, device and dtype; loads through the shared cache and records the result."""
    st.header("Model")
    built = organism_built()
    if not built:
        organism_builder()
    labels = list(MODEL_CHOICES)
    label = st.radio("Model", labels, index=0 if built else 1, key="atlas_model_choice")
    spec = MODEL_CHOICES[label]
    if spec is None:
        spec = st.text_input(
            "Hugging Face id or local path", key="atlas_model_path", placeholder="Qwen/Qwen2.5-0.5B-Instruct"
        ).strip()
    device = st.selectbox("Device", device_choices(), key="atlas_device")
    dtype = st.selectbox(
        "Dtype", DTYPES, key="atlas_dtype", help="float32 is exact on CPU; bfloat16 halves GPU memory."
    )
    if not spec:
        st.session_state.pop(_state.MODEL, None)
        st.info("Type a model id or path to load it.")
        return
    try:
        loaded = _state.shared_model(spec, device, dtype)
    except ModelLoadError as err:
        st.session_state.pop(_state.MODEL, None)
        st.error(str(err))
        return
    except Exception as err:  # noqa: BLE001 - any failure must leave the app usable
        st.session_state.pop(_state.MODEL, None)
        st.error(f"Loading {spec!r} failed: {err}. Check the id or path, or choose a bundled model.")
        return
    st.session_state[_state.MODEL] = (spec, device, dtype)
    st.caption(f"{loaded.spec}: {loaded.n_layers} layers, width {loaded.d_model}, {loaded.dtype}, {loaded.device}")


def parse_upload(name: str, data: bytes, column: str | None) -> PromptSet:
    """A PromptSet from an uploaded file: size-checked first, parsed once per content in a
    small bounded cache (refusal_core/prompts/uploads.py)."""
    return parse_prompt_upload(name, data, column)


def prompt_set_sidebar(kind: str) -> PromptSet | None:
    """Built-in set with a split, or an uploaded file with an optional column name."""
    source = st.radio(
        f"{kind.capitalize()} prompts", ["Built-in", "Upload"], horizontal=True, key=f"atlas_{kind}_source"
    )
    try:
        if source == "Built-in":
            split = st.selectbox("Split", SPLITS, key=f"atlas_{kind}_split")
            return builtin(kind, split)
        types = [ext.lstrip(".") for ext in SUPPORTED_EXTENSIONS]
        upload = st.file_uploader(f"{kind.capitalize()} prompt file", type=types, key=f"atlas_{kind}_file")
        column = st.text_input("Column (blank: auto)", key=f"atlas_{kind}_column")
        if upload is None:
            st.caption("Upload a .txt, .json, .jsonl or .csv file.")
            return None
        return parse_upload(upload.name, upload.getvalue(), column.strip() or None)
    except PromptSetError as err:
        st.error(str(err))
        return None


def prompts_sidebar() -> None:
    st.header("Prompts")
    max_prompts = int(
        st.number_input("Max prompts per set", min_value=2, max_value=5000, value=32, step=8, key="atlas_max_prompts")
    )
    chosen = {}
    for kind in ("harmful", "harmless"):
        prompts = prompt_set_sidebar(kind)
        if prompts is not None:
            chosen[kind] = sample_prompts(prompts, max_prompts)
            st.caption(f"{len(chosen[kind])} of {len(prompts)} prompts from {prompts.name}")
    st.session_state[_state.PROMPTS] = chosen


def judge_sidebar() -> None:
    """Which registered judge gives the verdicts on the Generate and Search pages (list from the registry)."""
    from refusal_core.judges.registry import DEFAULT_JUDGE, judges

    st.header("Judge")
    entries = judges()
    names = list(entries)
    st.selectbox(
        "Judge of replies",
        names,
        index=names.index(DEFAULT_JUDGE),
        key=_state.JUDGE,
        help=" ".join(f"{name}: {entry.description}." for name, entry in entries.items()),
    )


def chat_sidebar() -> None:
    """Chat-template options (one ``key=value`` per line), e.g. ``enable_thinking=false``."""
    with st.expander("Chat template options"):
        text = st.text_area(
            "One key=value per line (value read as JSON)",
            key="atlas_chat_options_text",
            placeholder="enable_thinking=false",
            help="Variables for the model's chat template: enable_thinking=false turns Qwen 3 / SmolLM 3 reasoning off; "
            "reasoning_effort=low for gpt-oss. Used by the Generate page.",
        )
        try:
            st.session_state[_state.CHAT_OPTIONS] = parse_template_options(text.splitlines())
        except TemplateError as err:
            st.session_state[_state.CHAT_OPTIONS] = ()
            st.error(str(err))


def cache_sidebar() -> None:
    with st.expander("Cache"):
        usage = cache_usage()
        if not usage:
            st.caption("The cache is empty.")
        for folder, size in usage.items():
            st.caption(f"cache/{folder}: {human_bytes(size)}")
        if st.button("Clear activation cache", key="atlas_clear_cache"):
            removed = clear_activation_cache()
            st.success(f"Removed {removed} cached activation files; computed results in this session are kept.")


# Explicit URL paths, so a page opened by its address (/generate) is the page the sidebar links to.
PAGES = [
    st.Page("app_pages/home.py", title="Start", icon=":material/flag:", default=True),
    st.Page("app_pages/data.py", title="Data & activations", icon=":material/database:", url_path="data"),
    st.Page("app_pages/manifold.py", title="Manifold", icon=":material/scatter_plot:", url_path="manifold"),
    st.Page("app_pages/directions.py", title="Directions", icon=":material/explore:", url_path="directions"),
    st.Page("app_pages/categories.py", title="Categories", icon=":material/category:", url_path="categories"),
    st.Page("app_pages/generate.py", title="Generate", icon=":material/chat:", url_path="generate"),
    st.Page("app_pages/search.py", title="Search", icon=":material/manage_search:", url_path="search"),
    st.Page(
        "app_pages/many_directions.py",
        title="Many directions",
        icon=":material/stacked_line_chart:",
        url_path="many-directions",
    ),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page("app_pages/export.py", title="Export", icon=":material/download:", url_path="export"),
    st.Page("app_pages/report.py", title="Report", icon=":material/description:", url_path="report"),
]


def main() -> None:
    # A local icon: a Material icon name makes the browser fetch the favicon from a font CDN,
    # which fails (and retries) on an offline machine.
    st.set_page_config(page_title="Refusal Atlas", page_icon=str(ICON), layout="wide")
    page = st.navigation(PAGES)
    _state.restore_widgets(page.url_path)
    _state.umap_warm_up()
    with st.sidebar:
        model_sidebar()
        prompts_sidebar()
        judge_sidebar()
        chat_sidebar()
        _charts.format_sidebar()
        cache_sidebar()
    try:
        page.run()
    finally:  # also when the page stops early (st.stop) or reruns
        _state.remember_widgets()


main()
