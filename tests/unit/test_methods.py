"""The direction-method registry: every registered method passes the same checks, and a
method added in one file shows up in the CLI help and on the dashboard."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from refusal_core.cli import build_parser, main
from refusal_core.directions.base import DirectionSet
from refusal_core.directions.provenance import PROVENANCE_KEYS, data_hash
from refusal_core.directions.registry import (
    DirectionMethod,
    FitInput,
    methods,
    register,
    setting,
    settings_fields,
    unregister,
)
from refusal_core.prompts.loaders import builtin
from refusal_core.selection import optimize  # noqa: F401  (registers the optimize method)
from tests.app_hooks import no_umap_warm_up, use_tiny_models

# Settings that keep every method to a second or two on the tiny model; a new method runs with its defaults.
FAST = {"som": {"x": 2, "y": 2, "iterations": 100}, "optimize": {"steps": 2, "batch_size": 4}, "cluster": {"k": 2}}


@dataclasses.dataclass(frozen=True)
class ToySettings:
    """Settings of the toy method."""

    scale: float = setting(2.0, "how much to stretch the harmful mean")
    label: str = setting("toy", "name prefix of the direction", choices=("toy", "demo"))


def toy_fit(data: FitInput, settings: ToySettings) -> DirectionSet:
    harmful, harmless = data.layer_points()
    vector = settings.scale * (harmful.double().mean(0) - harmless.double().mean(0)).float()
    return DirectionSet(vector[None], (f"{settings.label}/0",), (data.provenance("toy", settings, at_layer=True),))


@pytest.fixture
def toy_method():
    method = register(
        DirectionMethod(
            name="toy",
            title="Toy mean",
            help="a toy method added by a test",
            settings=ToySettings,
            fit=toy_fit,
            reads="layer",
        )
    )
    yield method
    unregister("toy")


@pytest.fixture(scope="module")
def fit_input(tiny_llama):
    harmful, harmless = builtin("harmful", "train").head(6), builtin("harmless", "train").head(6)
    return FitInput(tiny_llama, harmful, harmless, layer=1, position=-1)


def _data(fit_input, method: DirectionMethod) -> FitInput:
    if method.reads != "init":
        return fit_input
    dim = methods()["dim"].fit(fit_input, methods()["dim"].settings())
    return dataclasses.replace(fit_input, init=dim.select(["dim/pos-1/layer1"]))


@pytest.mark.parametrize("name", list(methods()) + ["toy"])
def test_every_registered_method_honours_the_contract(name, fit_input, toy_method, one_thread):
    method = methods()[name]
    fields = settings_fields(method.settings)
    assert all(field.help for field in fields)
    settings = method.settings(**FAST.get(name, {}))
    data = _data(fit_input, method)
    torch.manual_seed(1)
    first = method.fit(data, settings)
    torch.manual_seed(2)
    second = method.fit(data, settings)
    assert first.vectors.dim() == 2 and first.vectors.shape[1] == fit_input.loaded.d_model and len(first) >= 1
    assert torch.isfinite(first.vectors).all()
    assert first.names == second.names and torch.equal(first.vectors, second.vectors)  # deterministic given its seed
    expected_hash = data_hash(fit_input.harmful, fit_input.harmless)
    for record in first.provenance:
        assert set(PROVENANCE_KEYS) <= set(record), record
        assert record["model"] == fit_input.loaded.spec and record["data_hash"] == expected_hash
        assert record["params"]["n_harmful"] == 6


def test_settings_without_descriptions_are_refused():
    @dataclasses.dataclass(frozen=True)
    class Bare:
        steps: int = 3

    with pytest.raises(TypeError, match="no description"):
        register(DirectionMethod(name="bare", title="Bare", help="", settings=Bare, fit=toy_fit))
    assert "bare" not in methods()


def test_an_added_method_appears_in_the_cli(toy_method, capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["directions", "--help"])
    assert "a toy method added by a test" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["directions", "toy", "--help"])
    help_text = capsys.readouterr().out
    assert "--scale" in help_text and "how much to stretch the harmful mean" in help_text and "--layer" in help_text
    assert "{toy,demo}" in help_text


def test_an_added_method_runs_from_the_cli(toy_method, tiny_llama, tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_llama.model.save_pretrained(model_dir)
    tiny_llama.tokenizer.save_pretrained(model_dir)
    code = main(
        [
            "directions",
            "toy",
            "--model",
            str(model_dir),
            "--layer",
            "1",
            "--limit",
            "4",
            "--scale",
            "3",
            "--label",
            "demo",
            "--out",
            str(tmp_path / "toy"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "demo/0" in out and "Wrote 1 directions" in out


def test_an_added_method_appears_on_the_directions_page(toy_method, monkeypatch):
    from streamlit.testing.v1 import AppTest

    use_tiny_models(monkeypatch)
    no_umap_warm_up(monkeypatch)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=60).run()
    at.number_input(key="atlas_max_prompts").set_value(4).run()
    at.switch_page("app_pages/directions.py").run()
    assert not at.exception, [e.value for e in at.exception]
    choice = at.selectbox(key="method_choice")
    assert "toy" in choice.options or "Toy mean" in choice.options  # listed among the other methods, by title
    choice.set_value("toy").run()
    assert at.selectbox(key="method_choice").value == "toy"
    assert at.number_input(key="method_toy_scale").value == 2.0
    assert at.selectbox(key="method_toy_label").options == ["toy", "demo"]
    at.number_input(key="method_toy_layer").set_value(1)
    at.button(key="method_fit_toy").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    workspace = next(iter(at.session_state["atlas_workspaces"].values()))
    assert workspace.direction_sets["Toy mean"].names == ("toy/0",)
