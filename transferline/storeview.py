"""The registry reads of `status`, `history` and `lineage`, answered from MLflow's SQLite file.

Those commands ask MLflow a handful of questions (the champion alias, a
version's tags, the registered model's tags, the newest top-level run).
Importing MLflow to ask them costs 2-5 s on two cores, nearly all of it
imports (cProfile), while sqlite3 (stdlib) answers them in milliseconds.
`StoreView` is a read-only stand-in for the few `MlflowClient` methods those
commands call, over the same tables, so the code that shapes the answers
(transferline.status, champion, lineage) is one for both.

It reads MLflow's own schema, so it is tied to one revision of it: the
database's alembic revision must be `SCHEMA`, the one the locked MLflow
writes (tests/test_storeview.py fails when an MLflow upgrade moves it, and
holds every answer equal to MlflowClient's on a real store). Anything else
raises `AskMlflow` and the caller asks MLflow itself: another revision, a
tracking server, a missing model, version, alias or experiment (MLflow's own
path says what is missing), a database being replaced. Never a write.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from transferline.config import TrackingParams
from transferline.dvcexp import project_root
from transferline.preflight import sqlite_file

SCHEMA = "dc11669786a5"  # alembic revision of MLflow 3.17's tracking schema (uv.lock)
WORKSPACE = "default"  # MLflow's workspace when workspaces are off (the default)
DELETED_VERSION = "Deleted_Internal"  # MLflow keeps a deleted version's row under this stage
START_TIME_DESC = ["attributes.start_time DESC"]  # the one run order asked for (status: the newest run)
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
T = TypeVar("T")


def store_file(cfg: TrackingParams) -> Path | None:
    """The SQLite file MLflow opens for `cfg` (as tracking.configure picks it), or None for a server."""
    db = sqlite_file(os.environ.get(TRACKING_URI_ENV) or cfg.uri)
    if db is None:
        return None
    return db if db.is_absolute() else project_root() / db


class AskMlflow(LookupError):
    """The view cannot answer this; ask MLflow (it says what is missing, or reads what the view cannot)."""


class Page(list):
    """A page of runs, like MLflow's PagedList: `token` names the next page, or None."""

    token: str | None = None


class StoreView:
    """Read-only answers to the MlflowClient calls the read-only commands make."""

    def __init__(self, db: Path) -> None:
        if not db.is_file():
            raise AskMlflow(f"{db}: no database yet")
        try:
            # mode=ro: never creates, migrates or writes the file. One transaction until close():
            # every answer comes from the same state of the store, even while a run writes to it.
            self._db = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=5, isolation_level=None)
            self._db.execute("BEGIN")
            rows = self._db.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.Error as err:
            raise AskMlflow(f"{db}: {err}") from None
        if rows != [(SCHEMA,)]:
            raise AskMlflow(f"{db}: schema revision {rows}, the view reads {SCHEMA}")

    @classmethod
    def of(cls, cfg: TrackingParams) -> StoreView:
        """The view of the SQLite file `cfg` (or MLFLOW_TRACKING_URI) names; AskMlflow for a server."""
        db = store_file(cfg)
        if db is None:
            raise AskMlflow("a tracking server: only MLflow can ask it")
        return cls(db)

    def close(self) -> None:
        self._db.close()  # ends the read transaction: writers no longer wait for it

    def __enter__(self) -> StoreView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _rows(self, sql: str, *args: Any) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise AskMlflow(str(err)) from None

    def _one(self, sql: str, *args: Any) -> tuple:
        rows = self._rows(sql, *args)
        if len(rows) != 1:
            raise AskMlflow(f"{len(rows)} rows for {args}")
        return rows[0]

    # -- the MlflowClient subset ------------------------------------------------

    def get_experiment_by_name(self, name: str) -> SimpleNamespace:
        experiment_id, stage = self._one(
            "SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = ? AND workspace = ?", name, WORKSPACE)
        if stage != "active":
            raise AskMlflow(f"experiment {name} is {stage}")  # tracking.configure restores it: a write
        return SimpleNamespace(experiment_id=str(experiment_id), name=name, lifecycle_stage=stage)

    def get_registered_model(self, name: str) -> SimpleNamespace:
        self._one("SELECT name FROM registered_models WHERE name = ? AND workspace = ?", name, WORKSPACE)
        aliases = self._rows("SELECT alias, version FROM registered_model_aliases WHERE name = ? AND workspace = ?",
                             name, WORKSPACE)
        tags = self._rows("SELECT key, value FROM registered_model_tags WHERE name = ? AND workspace = ?",
                          name, WORKSPACE)
        return SimpleNamespace(name=name, aliases={a: str(v) for a, v in aliases}, tags=dict(tags))

    def get_model_version(self, name: str, version: str) -> SimpleNamespace:
        try:
            number = int(version)
        except ValueError:
            raise AskMlflow(f"version {version!r}") from None
        created, source, run_id, description = self._one(
            "SELECT creation_time, source, run_id, description FROM model_versions "
            "WHERE name = ? AND version = ? AND workspace = ? AND current_stage != ?",
            name, number, WORKSPACE, DELETED_VERSION)
        tags = self._rows("SELECT key, value FROM model_version_tags WHERE name = ? AND version = ? AND workspace = ?",
                          name, number, WORKSPACE)
        aliases = self._rows("SELECT alias FROM registered_model_aliases WHERE name = ? AND version = ? "
                             "AND workspace = ?", name, number, WORKSPACE)
        return SimpleNamespace(name=name, version=str(number), creation_timestamp=created, source=source,
                               run_id=run_id, description=description, tags=dict(tags),
                               aliases=[a for (a,) in aliases])

    def get_model_version_by_alias(self, name: str, alias: str) -> SimpleNamespace:
        if alias.lower() == "latest":
            raise AskMlflow("'latest' is MLflow's own rule")
        (version,) = self._one("SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ? "
                               "AND workspace = ?", name, alias, WORKSPACE)
        return self.get_model_version(name, str(version))

    def search_runs(self, experiment_ids: list[str], order_by: list[str] | None = None, max_results: int = 1000,
                    page_token: str | None = None) -> Page:
        """Active runs, newest first (MLflow's order: start time, then run id), with their tags."""
        if order_by not in (None, START_TIME_DESC):
            raise AskMlflow(f"order {order_by}")
        offset = int(page_token or 0)
        marks = ",".join("?" * len(experiment_ids))
        runs = self._rows(
            f"SELECT run_uuid, name, status, start_time, end_time FROM runs WHERE experiment_id IN ({marks}) "
            "AND lifecycle_stage = 'active' ORDER BY start_time IS NULL, start_time DESC, run_uuid LIMIT ? OFFSET ?",
            *(int(e) for e in experiment_ids), max_results + 1, offset)
        page = Page(self._run(*row) for row in runs[:max_results])
        page.token = str(offset + max_results) if len(runs) > max_results else None
        return page

    def get_run(self, run_id: str) -> SimpleNamespace:
        return self._run(*self._one("SELECT run_uuid, name, status, start_time, end_time FROM runs "
                                    "WHERE run_uuid = ?", run_id))

    def _run(self, run_id: str, name: str, status: str, start: int | None, end: int | None) -> SimpleNamespace:
        tags = self._rows("SELECT key, value FROM tags WHERE run_uuid = ?", run_id)
        metrics = self._rows("SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", run_id)
        info = SimpleNamespace(run_id=run_id, run_name=name, status=status, start_time=start, end_time=end)
        data = SimpleNamespace(tags=dict(tags), metrics={k: float("nan") if nan else v for k, v, nan in metrics})
        return SimpleNamespace(info=info, data=data)


def read_registry(cfg: TrackingParams, read: Callable[[Any], T]) -> T:
    """`read(client)` with the SQLite view when it can answer, else with MLflow's client (the
    store configured as every stage configures it: the experiment made if missing)."""
    try:
        with StoreView.of(cfg) as view:
            return read(view)
    except AskMlflow:
        pass
    import mlflow

    from transferline import tracking

    tracking.configure(cfg)
    return read(mlflow.MlflowClient())
