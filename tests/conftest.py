"""Shared fixtures: the real params shrunk to a few hundred samples, real
built-in data sliced small, and throw-away project folders for DVC runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from kit.scaffold import make_project  # noqa: F401  (re-exported for tests)

ROOT = Path(__file__).resolve().parents[1]
# shared by every test and checkout folder; where a TRANSFERLINE_DOWNLOADS of your own points, there
DOWNLOADS = Path(os.environ.setdefault("TRANSFERLINE_DOWNLOADS", str(ROOT / ".transferline" / "downloads")))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# the test harness's Prefect server: its telemetry heartbeat writes to the SQLite file the
# server itself is writing (a "database is locked" traceback in the log) and phones home
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("TRANSFERLINE_MLFLOW_RUN_ID", None)
os.environ.pop("MLFLOW_TRACKING_URI", None)
# The suite starts hundreds of Python processes (CLI, stages, servers): a shell that forbids
# .pyc files would have each compile prefect, mlflow and dvc from source (seconds each).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False

# MLflow writes these into os.environ (set_tracking_uri, set_experiment); one
# test's values must not leak into the next test or its subprocesses.
MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "TRANSFERLINE_MLFLOW_RUN_ID")
# The CLI points PREFECT_API_URL at a local server it finds up (transferline server start);
# a test that does so in-process must not send later tests' runs to a server it stopped.
PREFECT_ENV = ("PREFECT_API_URL", "PREFECT_HOME")


@pytest.fixture(autouse=True)
def _isolate_mlflow_env():
    saved = {k: os.environ.get(k) for k in MLFLOW_ENV + PREFECT_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """One real Prefect server (SQLite, loopback) for the session's pipeline runs.

    A `transferline run` on Prefect's ephemeral API starts a temporary server first: about
    13 s here (bench: no-op run 20.7 s ephemeral vs 8.0 s server up), paid by every run in
    every end-to-end test. The files that test runs, not Prefect's startup, share this one
    (`shared_prefect`); the ephemeral path keeps its own tests (faults, CLI)."""
    from kit.prefectserver import prefect_server

    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as api:
        yield api
        # The run logs this process still queues for the server go now, while it is up: at exit
        # it is gone, and Prefect prints "Error logging to API" after the test summary.
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)


@pytest.fixture(scope="module")
def prefect_in_process(prefect_api) -> str:
    """The session's server for the flows and tasks a module runs in this process (the
    experiments): Prefect's settings here, and PREFECT_API_URL for the worker processes and
    Ray nodes they start. A prefect_test_harness per module started a server of its own
    (about 30 s here, paid by two modules)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with pytest.MonkeyPatch.context() as patch, temporary_settings({PREFECT_API_URL: prefect_api}):
        patch.setenv("PREFECT_API_URL", prefect_api)
        yield prefect_api


@pytest.fixture
def shared_prefect(prefect_api, monkeypatch) -> str:
    """PREFECT_API_URL -> the session's server, for this test and the commands it starts."""
    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    return prefect_api


TINY = {
    "split": {"labels_per_class": 10, "val_per_class": 5, "source_max_samples": 600, "test_fraction": 0.1},
    "pretrain": {"epochs": 1, "batch_size": 64},
    "finetune": {"epochs": 3, "batch_size": 32, "augment": False},  # the tests' accuracy floors were set without it
    # a tiny run reaches ~0.3-0.5 test accuracy: floors it can pass, the margins as shipped
    "promote": {"metrics": {"accuracy": {"min": 0.2, "margin_abs": 0.005}, "macro_f1": {"min": 0.1}},
                "min_test_size": 5},  # tiny splits (tests/test_faults.py checks the real floor)
    # Prefect's ephemeral API per command, so no test leaves a server behind; the default (a local
    # server started once) is tested in test_init.py and test_localserver.py.
    "orchestrate": {"local_server": False},
}


def tiny_raw_params(**overrides: dict) -> dict:
    """params.yaml as a dict, shrunk for a CPU test run. An override of a stage
    section (finetune={...}) goes to its image values (finetune.image); a shared
    section (promote, orchestrate, ...) is merged as it is."""
    from transferline.config import MODALITY_SECTIONS

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section in {*TINY, *overrides}:
        values = overrides.get(section, {})
        if section in MODALITY_SECTIONS:
            raw[section]["image"] = {**raw[section].get("image", {}), **TINY.get(section, {}), **values}
        elif isinstance(values, dict):
            raw[section] = {**raw.get(section, {}), **TINY.get(section, {}), **values}
        else:
            raw[section] = values
    return raw


@pytest.fixture
def tiny_params():
    from transferline.config import parse_params

    return parse_params(tiny_raw_params())


@pytest.fixture(scope="session")
def builtin_sets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The real MNIST and Animal-MNIST arrays (downloaded once, sha256-checked)."""
    from transferline.image.data import load_animal_mnist, load_mnist

    return {"source": load_mnist(), "target": load_animal_mnist()}


@pytest.fixture
def tiny_raw(tmp_path, monkeypatch, builtin_sets) -> Path:
    """A project folder holding data/raw with a stratified slice of the real sets."""
    from transferline.config.image import ANIMAL_MNIST, MNIST
    from transferline.io import save_arrays, write_json

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    for name, per_class in (("source", 60), ("target", 40)):
        x, y = builtin_sets[name]
        idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
        save_arrays(tmp_path / "data/raw" / f"{name}.npz", x=x[idx], y=y[idx])
    write_json(tmp_path / "data/raw/meta.json", {
        "source": {"origin": "test", "classes": list(MNIST.classes), "n": 600},
        "target": {"origin": "test", "classes": list(ANIMAL_MNIST.classes), "n": 400, "unreadable": []},
    })
    return tmp_path
