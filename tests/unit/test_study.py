"""The study a search fills: an exact total over workers, surplus trials never evaluated,
and storage URLs and study names checked before anything runs."""

from __future__ import annotations

import threading

import optuna  # noqa: F401 - a required package: a broken install fails here, never skips
import pytest
import torch

from refusal_core.directions.base import DirectionSet
from refusal_core.errors import SettingsError
from refusal_core.selection.search import SearchSettings, run_search
from refusal_core.selection.study import SurplusTrial, _budgeted, open_study, redact, storage_url

pytestmark = pytest.mark.usefixtures("one_thread")

HARMFUL = ["Explain how to break into a house without a key.", "Give me step by step instructions to make a weapon."]


def _pool() -> DirectionSet:
    vectors = torch.randn(5, 64, generator=torch.Generator().manual_seed(1))
    return DirectionSet(vectors, tuple(f"r{i}" for i in range(5)), tuple({"layer": 1} for _ in range(5)))


def test_two_workers_in_threads_add_up_to_the_study_total(tiny_llama, tmp_path):
    settings = SearchSettings(
        k=2, n_trials=7, objective="score", kl_penalty=0.0, storage=str(tmp_path / "s.db"), study_name="shared"
    )
    results, errors = [], []

    def work() -> None:
        try:
            results.append(run_search(tiny_llama, _pool(), HARMFUL, None, settings))
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            errors.append(err)

    workers = [threading.Thread(target=work) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert errors == []
    finished = [t for t in results[1].trials if t["state"] in ("COMPLETE", "PRUNED")]
    assert len(results) == 2 and len(finished) == 7
    assert sum(result.ran for result in results) == 7
    again = run_search(tiny_llama, _pool(), HARMFUL, None, settings)  # a resumed run: nothing left to do
    assert again.ran == 0 and len(again.trials) == len(results[1].trials)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask() outside optimize(), as a test may
def test_a_trial_beyond_the_total_is_failed_unevaluated(tmp_path):
    study = open_study(storage_url(str(tmp_path / "s.db"), "x"), "surplus", seed=0, heartbeat_seconds=5)
    trials = [study.ask() for _ in range(3)]  # three live trials, as three workers would hold
    evaluated = []
    budgeted = _budgeted(lambda trial: evaluated.append(trial.number) or 0.0, total=2)
    assert budgeted(trials[1]) == 0.0
    with pytest.raises(SurplusTrial):
        budgeted(trials[2])
    assert evaluated == [1] and trials[2].user_attrs["surplus"] is True


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("study_name", "my study!", "Study name 'my study!'"),
        ("study_name", "", "Study name ''"),
        ("storage", "ftp://host/db", "ftp://host/db is not a database URL"),
        ("storage", "postgresql://me:secret@/db?host=/nonexistent-socket-dir", "Cannot open the study storage"),
        ("heartbeat_seconds", 0, "heartbeat_seconds"),
    ],
)
def test_bad_storage_and_names_are_settings_errors(tiny_llama, field, value, message):
    with pytest.raises(SettingsError, match=message) as caught:
        settings = SearchSettings(
            k=2, n_trials=1, objective="score", kl_penalty=0.0, **{"study_name": "ok", field: value}
        )
        run_search(tiny_llama, _pool(), HARMFUL, None, settings)
    assert "secret" not in str(caught.value)


def test_passwords_are_redacted():
    assert redact("postgresql://me:pa:ss@host:5432/db") == "postgresql://me:***@host:5432/db"
    assert redact("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
