"""One way to declare settings (refusal_core.settings): flags generated from the fields parse
back to the dataclass's own defaults, convert and check values, and keep old names working."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest

from refusal_core.categories.settings import CategoriesSettings
from refusal_core.cli import build_parser
from refusal_core.directions.registry import methods
from refusal_core.errors import SettingsError
from refusal_core.experiments.many_directions import ManyDirectionsSettings
from refusal_core.organism.report import ReportSettings
from refusal_core.selection import optimize  # noqa: F401  (registers the optimize method)
from refusal_core.selection.racing import RacingSettings
from refusal_core.selection.result import SelectionFilters
from refusal_core.selection.search import SearchSettings
from refusal_core.settings import add_setting_flags, setting, settings_fields, settings_from_args


@dataclass(frozen=True)
class Demo:
    steps: int = setting(8, "Adam steps", minimum=1, maximum=500, aliases=("--iterations",))
    rate: float = setting(0.5, "a rate", minimum=0.0, maximum=1.0)
    mode: Literal["a", "b"] = setting("a", "which mode", choices=("a", "b"))
    verbose: bool = setting(False, "say more")
    keep: bool = setting(True, "keep things")
    k: int | None = setting(None, "clusters (default: automatic)")
    hidden: str = setting("x", "not on the command line", cli=False)


def _parser(settings: type = Demo) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo", exit_on_error=False)
    add_setting_flags(parser, settings)
    return parser


def test_fields_describe_kinds_defaults_and_optional_values():
    fields = {field.name: field for field in settings_fields(Demo)}
    assert fields["steps"].kind is int and fields["rate"].kind is float and fields["mode"].kind is str
    assert fields["verbose"].kind is bool and fields["k"].optional and fields["k"].kind is int
    assert fields["steps"].flag == "--steps" and fields["steps"].aliases == ("--iterations",)
    assert fields["mode"].label == "Mode" and not fields["hidden"].cli


def test_no_flags_give_the_dataclass_defaults():
    assert settings_from_args(Demo, _parser().parse_args([])) == Demo()


def test_flags_convert_values_and_switches():
    args = _parser().parse_args(
        ["--steps", "12", "--rate", "0.25", "--mode", "b", "--verbose", "--no-keep", "--k", "3"]
    )
    assert settings_from_args(Demo, args) == Demo(steps=12, rate=0.25, mode="b", verbose=True, keep=False, k=3)
    assert not hasattr(args, "hidden")


def test_a_renamed_flag_keeps_its_old_name():
    assert _parser().parse_args(["--iterations", "7"]).steps == 7


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--steps", "x"], "not of type int"),
        (["--rate", "x"], "not of type float"),
        (["--mode", "c"], "invalid choice"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(argv, says, capsys):
    parser = argparse.ArgumentParser(prog="demo")
    add_setting_flags(parser, Demo)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and argv[0] in err and says in err


def test_bounds_are_left_to_the_dataclass_which_names_the_fix():
    """The widgets' bounds do not turn into argparse exits: the dataclass's own check (a UserError,
    exit code 2 through the CLI, with its message) sees the value."""
    args = _parser(RacingSettings).parse_args(["--growth", "1"])
    with pytest.raises(SettingsError, match="growth >= 2"):
        settings_from_args(RacingSettings, args)


def test_a_flag_the_parser_already_has_is_left_to_it():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=99)
    added = add_setting_flags(parser, Demo)
    assert "steps" not in {field.name for field in added}
    assert settings_from_args(Demo, parser.parse_args([])).steps == 99


def test_undescribed_fields_are_refused():
    @dataclass
    class Bare:
        x: int = 1

    with pytest.raises(TypeError, match="no description"):
        settings_fields(Bare)


@pytest.mark.parametrize(
    "settings",
    [
        SearchSettings,
        SelectionFilters,
        RacingSettings,
        ManyDirectionsSettings,
        CategoriesSettings,
        ReportSettings,
        *(method.settings for method in methods().values()),
    ],
)
def test_every_settings_class_parses_back_to_its_own_defaults(settings):
    assert settings_from_args(settings, _parser(settings).parse_args([])) == settings()


def _subcommand(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return parser


def test_search_and_select_flags_keep_their_names_and_defaults():
    search = _subcommand("directions", "search")
    args = search.parse_args(["--pool", "p", "--out", "o"])
    assert settings_from_args(SearchSettings, args) == SearchSettings()
    args = search.parse_args(
        ["--pool", "p", "--out", "o", "--trials", "5", "--study", "s1", "--heartbeat", "3", "--k", "2"]
    )
    assert settings_from_args(SearchSettings, args) == SearchSettings(
        n_trials=5, study_name="s1", heartbeat_seconds=3, k=2
    )
    select = _subcommand("directions", "select")
    args = select.parse_args(["--dirs", "d", "--out", "o", "--max-kl", "0.2"])
    assert settings_from_args(SelectionFilters, args) == SelectionFilters(max_kl=0.2)
