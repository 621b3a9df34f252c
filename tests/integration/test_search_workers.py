"""Several `directions search` worker processes on one Optuna study through one storage URL.

Each test runs twice: on a real PostgreSQL server started for this module (tests/pg_server.py;
these fail where none can be started) and on an SQLite file. Two workers started together with ``--trials 8``
leave exactly 8 finished trials, each run once, by one of them, and their own counts add up
to 8; a worker killed mid-trial leaves a study that another worker finishes, re-running the
killed trial's directions once its heartbeat has lapsed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
import torch

from refusal_core.cli import main
from refusal_core.directions.base import DirectionSet
from tests.pg_server import postgres_server, require_postgres
from tests.tiny import tiny_model

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 8

# Worker processes and a database server: about a minute and a half on a busy 2-core machine.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def storage(request, tmp_path_factory):
    """(backend, URL), each backend its own test: the PostgreSQL tests need a server they can
    start (tests/pg_server.py) and fail without one, never testing SQLite under their name."""
    if request.param == "sqlite":
        yield "sqlite", f"sqlite:///{tmp_path_factory.mktemp('search') / 'study.db'}"
        return
    require_postgres()
    with postgres_server() as url:
        yield "postgresql", url


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """A tiny model saved to disk and a pool of five directions for the workers to load."""
    folder = tmp_path_factory.mktemp("workers")
    loaded = tiny_model("llama")
    loaded.model.save_pretrained(folder / "model")
    loaded.tokenizer.save_pretrained(folder / "model")
    vectors = torch.randn(5, loaded.d_model, generator=torch.Generator().manual_seed(0))
    provenance = tuple(
        {"model": "tiny", "layer": 1, "position": -1, "method": "random", "params": {}} for _ in range(5)
    )
    DirectionSet(vectors, tuple(f"r{i}" for i in range(5)), provenance).save(folder / "pool")
    return {"model": str(folder / "model"), "pool": str(folder / "pool"), "folder": str(folder)}


def _args(inputs: dict, url: str, study: str, out: str) -> list[str]:
    return [
        "directions",
        "search",
        "--model",
        inputs["model"],
        "--pool",
        inputs["pool"],
        "--k",
        "2",
        "--trials",
        str(TOTAL),
        "--objective",
        "substring",
        "--max-new-tokens",
        "3",
        "--limit",
        "3",
        "--storage",
        url,
        "--study",
        study,
        "--heartbeat",
        "1",
        "--json",
        "--out",
        out,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def _study(url: str, name: str):
    return optuna.load_study(study_name=name, storage=url)


def _finished(study) -> list:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def test_two_workers_fill_one_study_to_its_total(storage, inputs, tmp_path):
    backend, url = storage
    study_name = f"two-workers-{backend}"
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "refusal_core", *_args(inputs, url, study_name, str(tmp_path / f"best{i}"))],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    reports = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err.decode()[-3000:]
        reports.append(json.loads(out.decode().strip().splitlines()[-1]))

    finished = _finished(_study(url, study_name))
    numbers = [trial.number for trial in finished]
    assert len(finished) == TOTAL and len(set(numbers)) == TOTAL
    assert sum(report["ran"] for report in reports) == TOTAL
    pids = {str(worker.pid) for worker in workers}
    assert {trial.user_attrs["worker"].rsplit(":", 1)[1] for trial in finished} <= pids
    assert reports[0]["best"] and reports[0]["study"] == reports[1]["study"] == study_name


_KILLED_WORKER = textwrap.dedent(
    """
    import pathlib, sys, time
    from refusal_core.selection import trials

    evaluate = trials.TrialEvaluator.measure
    calls = []

    def measure(self, names):
        calls.append(1)
        if len(calls) == 2:  # the second evaluated subset: mid-trial, never finished
            pathlib.Path(sys.argv[1]).write_text("mid-trial")
            time.sleep(600)
        return evaluate(self, names)

    trials.TrialEvaluator.measure = measure
    from refusal_core.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def test_a_worker_killed_mid_trial_leaves_a_study_another_finishes(storage, inputs, tmp_path, capsys):
    backend, url = storage
    study_name = f"killed-worker-{backend}"
    ready = tmp_path / "mid-trial"
    args = _args(inputs, url, study_name, str(tmp_path / "best"))
    killed = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WORKER, str(ready), *args],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    while not ready.exists():
        assert killed.poll() is None, killed.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the worker never reached its second trial"
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait(30)
    running = optuna.trial.TrialState.RUNNING
    stuck = [t.number for t in _study(url, study_name).get_trials(deepcopy=False, states=(running,))]
    assert len(stuck) == 1
    done_before = len(_finished(_study(url, study_name)))
    assert done_before >= 1

    started = time.monotonic()
    assert main(args) == 0  # another worker, with the same command
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    study = _study(url, study_name)
    assert len(_finished(study)) == TOTAL and report["ran"] == TOTAL - done_before
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[stuck[0]] == optuna.trial.TrialState.FAIL
    retried = [t for t in study.get_trials(deepcopy=False) if t.system_attrs.get("failed_trial") == stuck[0]]
    assert len(retried) == 1 and retried[0].state != optuna.trial.TrialState.FAIL
    assert time.monotonic() - started < 120
