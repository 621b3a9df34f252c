"""The Optuna study behind a subset search: its storage, its name, and workers that share it.

Several worker processes, on one machine or several, fill one study through one RDB storage
URL (an SQLite file on one machine, PostgreSQL or MySQL across machines). The number of
trials asked for is the **study's total**: every worker stops when the study holds that many
finished (complete or pruned) trials, whoever ran them, so two workers with ``--trials 20``
give 20 trials, not 40, and a later run with a larger total adds only the rest.

Exactly that many, also when workers start together: before it evaluates anything, a trial
counts the live trials (running, waiting, finished) numbered below it, and a trial beyond
the total is failed at once with the user attribute ``surplus`` instead of being evaluated.
Each trial runs with an Optuna heartbeat; a worker that dies mid-trial stops beating, and
once its grace period has passed another worker marks the trial failed and re-runs the same
directions (``RetryHeartbeatStaleTrialCallback``). A worker whose remaining trials are all running
elsewhere waits for them, so the study is finished when the last worker returns.
"""

from __future__ import annotations

import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import Callable

from refusal_core.errors import SettingsError
from refusal_core.paths import cache_dir

__all__ = [
    "SurplusTrial",
    "check_storage",
    "check_study_name",
    "open_study",
    "redact",
    "run_to_total",
    "storage_url",
]

_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_DRIVERS = {"postgresql": 'psycopg[binary] (pip install -e ".[postgres]" -c constraints.txt)', "mysql": "PyMySQL"}
_RETRIES = 3


class SurplusTrial(Exception):
    """A trial started after the study already held its total; it is failed without evaluation."""


def check_study_name(name: str) -> str:
    if not isinstance(name, str) or not _STUDY_NAME.match(name):
        raise SettingsError(
            f"Study name {name!r} is not usable: use 1 to 128 letters, digits, '.', '_' or '-', starting "
            "with a letter or digit (e.g. --study som-layer10)."
        )
    return name


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and provenance."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def check_storage(storage: str | None) -> None:
    """Raise SettingsError for a storage that cannot be an Optuna RDB URL or an SQLite path."""
    if storage is None:
        return
    if not isinstance(storage, str) or not storage.strip():
        raise SettingsError("--storage is empty; give an SQLite file path or a URL such as postgresql://user@host/db.")
    if "://" not in storage:
        if Path(storage).is_dir():
            raise SettingsError(
                f"--storage {storage} is a folder; give a file path such as {storage.rstrip('/')}/search.db."
            )
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(storage).get_backend_name()
    except ArgumentError:
        backend = None
    if backend not in ("sqlite", "postgresql", "mysql"):
        raise SettingsError(
            f"--storage {redact(storage)} is not a database URL Optuna can use; give sqlite:///PATH.db, "
            "postgresql://USER:PASSWORD@HOST:PORT/DB or mysql+pymysql://USER:PASSWORD@HOST/DB (or a file path)."
        )


def storage_url(storage: str | None, study_name: str) -> str:
    """The Optuna storage URL: the given URL, a path as SQLite, or the default cache file."""
    check_storage(storage)
    if storage is not None and "://" in storage:
        return storage
    path = Path(storage) if storage is not None else cache_dir() / "search" / f"{study_name}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def _rdb_storage(url: str, heartbeat_seconds: int, attempts: int = 3):
    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import SQLAlchemyError

    # Several processes write one SQLite file: wait for its lock instead of failing at once.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # heartbeats and retries are marked experimental in Optuna 5
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat_seconds,
                    grace_period=3 * heartbeat_seconds,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=_RETRIES),
                )
        except ImportError as err:
            backend = url.split(":", 1)[0].split("+", 1)[0]
            driver = _DRIVERS.get(backend, "the database driver")
            raise SettingsError(
                f"--storage {redact(url)} needs {driver}: pip install it, or use an SQLite path."
            ) from err
        except SQLAlchemyError as err:
            # Workers that start together race to create the tables ("already exists"):
            # the loser finds them made on its next attempt.
            if attempt + 1 < attempts:
                time.sleep(0.5 * (attempt + 1))
                continue
            reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
            raise SettingsError(
                f"Cannot open the study storage {redact(url)} ({reason}). Check that the database server is running "
                "and that the URL's host, port, user, password and database name are right."
            ) from err
    raise AssertionError("unreachable")


def open_study(url: str, name: str, seed: int, heartbeat_seconds: int):
    """Create or load the study ``name`` in ``url``, with a heartbeat and retry of dead workers' trials."""
    import optuna

    check_study_name(name)
    return optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        storage=_rdb_storage(url, heartbeat_seconds),
        study_name=name,
        load_if_exists=True,
    )


def _budgeted(objective: Callable, total: int) -> Callable:
    """``objective`` that first checks this trial is one of the study's first ``total`` live ones."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def run(trial):
        trial.set_user_attr("worker", worker)
        before = [t for t in trial.study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        if len(before) >= total:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"the study already holds {total} trials; trial {trial.number} is not needed")
        return objective(trial)

    return run


def run_to_total(study, objective: Callable, total: int, on_trial: Callable, poll_seconds: float = 1.0) -> int:
    """Run trials until ``study`` holds ``total`` finished ones; returns how many this worker ran.

    ``on_trial(study, trial)`` is called after each trial of this worker that finished.
    """
    import optuna
    from optuna.trial import TrialState

    ran = 0

    def count(study, trial) -> None:
        nonlocal ran
        if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
            ran += 1
            on_trial(study, trial)

    budgeted = _budgeted(objective, total)
    while True:
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        if finished >= total:
            return ran
        if not states.count(TrialState.WAITING) and finished + states.count(TrialState.RUNNING) >= total:
            # The rest is running in other workers: wait for them, or for a dead worker's
            # heartbeat to lapse, when its trial is failed and re-queued for us to run.
            time.sleep(poll_seconds)
            optuna.storages.fail_stale_trials(study)
            continue
        study.optimize(budgeted, n_trials=1, catch=(SurplusTrial,), callbacks=[count])
