"""The distinct-pick encoding of a subset search trial, checked on Optuna alone (no model)."""

from __future__ import annotations

import itertools

import optuna
import pytest

from refusal_core.selection.subsets import decode_picks, enqueue_every_subset, picks_for, suggest_subset, trial_names

NAMES = tuple(f"d{i}" for i in range(5))


def test_picks_round_trip_for_every_ordered_subset():
    for k in range(1, 6):
        for subset in itertools.permutations(NAMES, k):
            picks = picks_for(subset, NAMES)
            assert all(0 <= pick < len(NAMES) - i for i, pick in enumerate(picks))
            assert decode_picks(picks, NAMES) == list(subset)
            assert trial_names({f"pick_{i}": pick for i, pick in enumerate(picks)}, NAMES) == sorted(subset)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_every_sampled_trial_names_k_distinct_directions(sampler):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    make = optuna.samplers.TPESampler if sampler == "tpe" else optuna.samplers.RandomSampler
    study = optuna.create_study(sampler=make(seed=0))
    drawn = []

    def objective(trial) -> float:
        names = suggest_subset(trial, NAMES, 4)
        drawn.append(names)
        return float(sum(NAMES.index(name) for name in names))

    study.optimize(objective, n_trials=60)
    assert len(drawn) == 60 and all(len(set(names)) == 4 and set(names) <= set(NAMES) for names in drawn)
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    # The random sampler reaches all C(5, 4) = 5 subsets in 60 draws.
    if sampler == "random":
        assert {tuple(sorted(names)) for names in drawn} == set(itertools.combinations(NAMES, 4))


def test_enqueued_subsets_are_each_drawn_once():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert enqueue_every_subset(study, NAMES, 3) == 10
    enqueue_every_subset(study, NAMES, 3)  # a second worker queuing the same subsets adds nothing
    assert len(study.trials) == 10
    drawn = []
    study.optimize(lambda trial: drawn.append(tuple(sorted(suggest_subset(trial, NAMES, 3)))) or 0.0, n_trials=10)
    assert sorted(drawn) == list(itertools.combinations(NAMES, 3))
