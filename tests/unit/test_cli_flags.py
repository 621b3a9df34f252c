"""Repeated flags, ``~`` in paths and colons inside direction paths, on the real CLI."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch

from refusal_core.cli import build_parser, main
from refusal_core.cli.common import CliError
from refusal_core.cli.preflight import refuse_repeated_flags
from refusal_core.directions.base import DirectionSet
from tests.tiny import tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "model"
    loaded = tiny_model("llama")
    loaded.model.save_pretrained(path)
    loaded.tokenizer.save_pretrained(path)
    return path


def _sets(folder) -> list[str]:
    generator = torch.Generator().manual_seed(9)
    stems = []
    for index in range(3):
        provenance = ({"model": "tiny", "layer": 1, "position": -1, "method": "dim", "params": {}},)
        DirectionSet(torch.randn(1, 64, generator=generator), ("d0",), provenance).save(folder / f"set{index}")
        stems.append(str(folder / f"set{index}"))
    return stems


def _generate(capsys, model_dir, *extra) -> dict[str, list[str]]:
    code = main(
        [
            "generate",
            "--model",
            str(model_dir),
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--kl-limit",
            "0",
            "--judge",
            "substring",
            "--json",
            *extra,
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err[-2000:]
    columns: dict[str, list[str]] = {}
    for line in out.splitlines():
        record = json.loads(line)
        if "variant" in record:
            columns.setdefault(record["variant"], []).append(record["completion"])
    return columns


def test_three_ablate_flags_make_three_columns_each_as_if_run_alone(model_dir, tmp_path, capsys):
    stems = _sets(tmp_path)
    together = _generate(capsys, model_dir, *[part for stem in stems for part in ("--ablate", stem)])
    assert list(together) == [f"ablate(set{i})" for i in range(3)]
    for index, stem in enumerate(stems):
        alone = _generate(capsys, model_dir, "--ablate", stem)
        assert list(alone.values()) == [together[f"ablate(set{index})"]]


def test_two_actadd_flags_make_two_columns(model_dir, tmp_path, capsys):
    stems = _sets(tmp_path)
    columns = _generate(capsys, model_dir, "--actadd", f"{stems[0]}:d0", "--actadd", f"{stems[1]}:d0", "--coeff", "8")
    assert list(columns) == ["actadd(set0:d0,L1,+8)", "actadd(set1:d0,L1,+8)"]


def test_every_single_value_flag_of_every_command_refuses_repetition():
    """For every command and every option that keeps one value: giving it twice is an error
    that names it; options declared repeatable (append) are accepted."""
    parser = build_parser()
    checked = 0

    def leaves(p: argparse.ArgumentParser, path: list[str]):
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            yield path, p
            return
        for name, child in sub.choices.items():
            yield from leaves(child, [*path, name])

    for path, leaf in leaves(parser, []):
        for action in leaf._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = max(action.option_strings, key=len)
            value = [] if action.nargs == 0 else ["1"]
            argv = [*path, flag, *value, flag, *value]
            if isinstance(action, (argparse._AppendAction, argparse._CountAction)):
                refuse_repeated_flags(parser, argv)
            else:
                with pytest.raises(CliError, match=f"{flag} was given 2 times"):
                    refuse_repeated_flags(parser, argv)
            checked += 1
    assert checked > 100  # every command's options, not a handful


def test_a_quoted_tilde_model_path_is_the_home_folder(model_dir, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    shutil.copytree(model_dir, home / "my-model")
    monkeypatch.setenv("HOME", str(home))
    assert main(["activations", "--model", "~/my-model", "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["harmful"]["prompts"] == 2


def test_a_colon_inside_the_direction_path_belongs_to_the_path(model_dir, tmp_path, capsys):
    folder = tmp_path / "run:7"
    folder.mkdir()
    provenance = tuple({"model": "tiny", "layer": 1, "position": -1, "method": "dim", "params": {}} for _ in range(2))
    DirectionSet(torch.randn(2, 64), ("d0", "d1"), provenance).save(folder / "pair")
    both = _generate(capsys, model_dir, "--ablate", str(folder / "pair"))
    one = _generate(capsys, model_dir, "--ablate", f"{folder / 'pair'}:d1")
    assert list(both) == ["ablate(2)"] and list(one) == ["ablate(1)"]
