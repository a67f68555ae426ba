"""transferline.storeview answers the read-only commands' registry questions from MLflow's SQLite
file exactly as MLflow's own client does, on a store MLflow wrote, and hands anything it cannot
answer to MLflow."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from test_cli_light import mlflow_env_kept
from transferline.config import TrackingParams
from transferline.storeview import SCHEMA, AskMlflow, StoreView, read_registry

NAME = "view-model"


def make_store(folder: Path) -> tuple[TrackingParams, dict]:
    """A store holding old and new top-level runs, a nested stage run, a model with a hand-registered
    version (metrics on its run only), a tagged one and a deleted one, two aliases with their moves,
    and a second model."""
    import mlflow

    from transferline import tracking
    from transferline.champion import move_alias

    cfg = TrackingParams(uri=f"sqlite:///{folder / 'mlflow.db'}", experiment="view",
                         artifact_root=str(folder / "artifacts"))
    experiment = tracking.configure(cfg)
    client = mlflow.MlflowClient()
    runs = {}
    for name in ("old", "pipeline", "stage", "unnamed"):
        runs[name] = client.create_run(experiment, run_name=name if name != "unnamed" else None,
                                       tags={"mlflow.parentRunId": runs["pipeline"]} if name == "stage"
                                       else {"team": "data"}).info.run_id
        time.sleep(0.01)  # distinct start times
    client.log_metric(runs["old"], "test_accuracy", 0.5)
    client.log_metric(runs["old"], "test_accuracy", 0.75)  # the latest value counts
    client.set_terminated(runs["old"], "FAILED")
    client.delete_run(runs["unnamed"])  # deleted runs are never the last run
    client.create_registered_model(NAME)
    client.create_registered_model("other")
    client.create_model_version("other", source=str(folder / "o"), tags={"accuracy": "0.1"})
    client.create_model_version(NAME, source=str(folder / "m1"), run_id=runs["old"])
    client.create_model_version(NAME, source=str(folder / "m2"), run_id=runs["pipeline"],
                                tags={"accuracy": "0.91", "git.commit": "0123abc", "dvc.models/m": "md5",
                                      "lineage.mlflow_run_id": runs["pipeline"], "params.seed": "42"})
    client.create_model_version(NAME, source=str(folder / "m3"))
    client.delete_model_version(NAME, "3")
    move_alias(client, NAME, "2", "first_champion", "first", None, {"challenger": {"accuracy": 0.91}})
    move_alias(client, NAME, "1", "forced", "by hand", "2")
    client.set_registered_model_alias(NAME, "staging", "2")
    client.set_registered_model_alias(NAME, "zz-first", "1")
    return cfg, runs


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[TrackingParams, dict]:
    with mlflow_env_kept():  # tracking.configure sets MLflow's variables; no test may see them
        return make_store(tmp_path_factory.mktemp("view"))


@pytest.fixture
def view(store) -> Iterator[StoreView]:
    with StoreView.of(store[0]) as opened:  # closed after the test: its read transaction blocks writers
        yield opened


def test_the_view_reads_the_schema_this_mlflow_writes(store):
    cfg, _ = store
    db = Path(cfg.uri.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as conn:
        written = conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]
    assert written == SCHEMA, (f"MLflow now writes schema {written}: check transferline/storeview.py's queries "
                               f"against its migrations, then set SCHEMA")


def test_every_answer_equals_mlflow_s(store, view):
    import mlflow

    from transferline import champion, lineage
    from transferline.status import _champion, _last_run

    cfg, runs = store
    answers = {}
    for kind, client in {"view": view, "mlflow": mlflow.MlflowClient(tracking_uri=cfg.uri, registry_uri=cfg.uri)}.items():
        experiment = client.get_experiment_by_name("view").experiment_id
        pages, token = [], None
        while True:  # every page, two runs a page
            page = client.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=2,
                                      page_token=token)
            pages.append([(r.info.run_id, r.info.run_name, r.info.status, r.data.tags) for r in page])
            if not (token := page.token):
                break
        answers[kind] = {
            "experiment": experiment,
            "pages": pages,
            "champion": _champion(client, NAME),
            "last_run": _last_run(client, experiment),
            "current": champion.current_champion(client, NAME),
            "history": champion.read_history(client, NAME),
            "lineage": [lineage.describe(client, ref) for ref in
                        (f"{NAME}@champion", f"{NAME}@staging", f"{NAME}/1", f"{NAME}/2", NAME, "other/1")],
            "metrics": dict(client.get_run(runs["old"]).data.metrics),
        }
    view, theirs = answers["view"], answers["mlflow"]
    assert view == theirs
    # what the store holds, so the comparison above covers each case
    assert view["champion"]["version"] == "1" and view["champion"]["metrics"] == {"test_accuracy": 0.75}
    assert view["last_run"]["run_id"] == runs["pipeline"]  # not the nested stage, nor the deleted run
    assert [m["to"] for m in view["history"]] == ["2", "1"]
    assert view["lineage"][0]["aliases"] == ["champion", "zz-first"] and view["lineage"][1]["code"] == {
        "commit": "0123abc"}
    assert sum(len(p) for p in view["pages"]) == 3 and len(view["pages"]) == 2


@pytest.mark.parametrize("ask", ["missing model", "missing version", "deleted version", "bad version", "latest",
                                 "missing alias", "missing run", "missing experiment"])
def test_what_the_view_cannot_answer_goes_to_mlflow(view, ask):
    call = {"missing model": lambda: view.get_registered_model("nope"),
            "missing version": lambda: view.get_model_version(NAME, "9"),
            "deleted version": lambda: view.get_model_version(NAME, "3"),
            "bad version": lambda: view.get_model_version(NAME, "x"),
            "latest": lambda: view.get_model_version_by_alias(NAME, "latest"),
            "missing alias": lambda: view.get_model_version_by_alias(NAME, "gone"),
            "missing run": lambda: view.get_run("0" * 32),
            "missing experiment": lambda: view.get_experiment_by_name("nope")}[ask]
    with pytest.raises(AskMlflow):
        call()


def test_another_schema_a_server_or_no_file_is_mlflow_s(store, tmp_path):
    cfg, _ = store
    copy = tmp_path / "copy.db"
    shutil.copy(cfg.uri.removeprefix("sqlite:///"), copy)
    with sqlite3.connect(copy) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'newer'")
    for uri in (f"sqlite:///{copy}", "http://127.0.0.1:1", f"sqlite:///{tmp_path / 'none.db'}"):
        with pytest.raises(AskMlflow):
            StoreView.of(cfg.model_copy(update={"uri": uri}))
    assert not (tmp_path / "none.db").exists()  # read-only: never creates the file


def test_read_registry_asks_mlflow_only_when_the_view_cannot(store):
    cfg, _ = store

    def reader(experiment: str):
        return lambda client: (type(client).__name__, client.get_experiment_by_name(experiment).experiment_id)

    assert read_registry(cfg, reader("view"))[0] == "StoreView"
    # a new experiment: MLflow's path makes it (as every stage does), then answers; then the view can
    fresh = cfg.model_copy(update={"experiment": "view-new"})
    made = read_registry(fresh, reader("view-new"))
    assert made[0] == "MlflowClient"
    assert read_registry(fresh, reader("view-new")) == ("StoreView", made[1])
