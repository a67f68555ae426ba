"""The champion/challenger gate on a real registry (SQLite) with real models of
known quality: a SmallCNN trained on real Animal-MNIST images, and copies of it
that never predict some classes (tests/kit/challengers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import MLFLOW_ENV, ROOT, tiny_raw_params
from kit.challengers import graded, make_gate_project, register_weights
from test_cli_light import import_chains, who_imported
from transferline.config import parse_params
from transferline.paths import Paths

NAME = "gate-test"
GATES = {"accuracy": {"min": 0.3, "margin_abs": 0.01, "margin_rel": 0.0},
         "macro_f1": {"min": 0.0, "margin_abs": 0.0, "margin_rel": 0.0}}


@pytest.fixture(scope="module")
def trained(builtin_sets, tmp_path_factory):
    """(project folder with a real test split, the trained model, its test set)."""
    project = tmp_path_factory.mktemp("gate")
    x, y = builtin_sets["target"]
    model, test = make_gate_project(project, x, y)
    (project / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())  # the CLI runs from a project root
    return project, model, test


def raw_params(tmp: Path) -> dict:
    return tiny_raw_params(
        tracking={"uri": f"sqlite:///{tmp / 'mlflow.db'}", "artifact_root": str(tmp / "mlartifacts"),
                  "experiment": "gate"},
        register={"model_name": NAME},
        promote={"metrics": GATES, "lock": "auto", "lock_timeout_s": 120},
    )


@pytest.fixture
def registry(tmp_path, trained, monkeypatch):
    project, model, test = trained
    monkeypatch.chdir(project)
    monkeypatch.delenv("TRANSFERLINE_PROMOTE_LOCK", raising=False)
    raw = raw_params(tmp_path)
    (project / "params.yaml").write_text(json.dumps(raw))
    yield parse_params(raw), project, model
    import mlflow

    while mlflow.active_run():
        mlflow.end_run("FAILED")


def gate(params, version: str) -> dict:
    from transferline.image import promote

    (Path("reports")).mkdir(exist_ok=True)
    Path("reports/register.json").write_text(json.dumps({"name": NAME, "version": version}))
    return promote.run(params, params.paths)


def current_test_set():
    from transferline.image.promote import test_set as read

    return read(Paths())


def champion(params) -> str | None:
    import mlflow

    version = mlflow.MlflowClient().get_registered_model(NAME).aliases.get("champion")
    return None if version is None else str(version)


def test_gate_worse_keeps_better_takes_rollback_and_force(registry):
    import mlflow

    from transferline import champion as champion_alias
    from transferline import promotion

    params, project, model = registry
    bad, medium, good = graded(model, 7), graded(model, 3), model

    # 1. the first model fails the absolute threshold: no champion at all
    v1 = register_weights(params, bad, project)["version"]
    report = gate(params, v1)
    assert report["decision"] == "rejected" and report["champion"] is None
    assert report["accuracy_difference_ci95"] is None  # no champion to compare with
    assert report["challenger"]["accuracy"] < GATES["accuracy"]["min"]
    assert champion(params) is None

    # 2. the first model that passes becomes champion
    v2 = register_weights(params, medium, project)["version"]
    report = gate(params, v2)
    assert report["decision"] == "first_champion" and champion(params) == v2
    medium_acc = report["challenger"]["accuracy"]

    # 3. a worse challenger that *claims* great metrics: re-scored, kept out
    v3 = register_weights(params, bad, project, claimed={"accuracy": 0.99, "macro_f1": 0.99})["version"]
    report = gate(params, v3)
    assert report["decision"] == "kept" and champion(params) == v2
    assert report["challenger"]["accuracy"] < report["champion"]["accuracy"] == medium_acc
    on_disk = json.loads(Path("reports/promote.json").read_text())
    assert on_disk["decision"] == "kept" and on_disk["champion"]["version"] == v2
    assert "**Decision: kept**" in Path("reports/promote.md").read_text()
    # how sure the difference is: a paired interval on the same test split, below 0 for a worse model
    interval = report["accuracy_difference_ci95"]
    delta = round(report["challenger"]["accuracy"] - report["champion"]["accuracy"], 5)
    assert interval["accuracy_low"] <= delta <= interval["accuracy_high"] < 0, (delta, interval)
    assert f"Challenger minus champion in accuracy: {delta:+.4f} (95% interval" in Path("reports/promote.md").read_text()
    tags = mlflow.MlflowClient().get_model_version(NAME, v3).tags
    assert tags["promote.decision"] == "kept" and tags["promote.champion_version"] == v2
    assert float(tags["promote.champion.accuracy"]) == pytest.approx(medium_acc)
    assert float(tags["promote.challenger.accuracy"]) == pytest.approx(report["challenger"]["accuracy"])

    # 4. a better one takes the alias; both figures are in the report
    v4 = register_weights(params, good, project)["version"]
    report = gate(params, v4)
    assert report["decision"] == "promoted" and champion(params) == v4, report["reason"]
    assert report["challenger"]["accuracy"] >= medium_acc + GATES["accuracy"]["margin_abs"]
    assert report["champion"] == {"version": v2, **{k: report["champion"][k] for k in ("accuracy", "macro_f1")}}

    # 5. a margin no challenger can meet keeps the champion (gating an older version on demand)
    strict = parse_params({**raw_params(Path(params.tracking.artifact_root).parent),
                           "promote": {"metrics": {"accuracy": {"min": 0.0, "margin_abs": 0.5}}}})
    report = promotion.run_gate(strict, current_test_set(), v2)
    assert report["decision"] == "kept" and champion(params) == v4

    # 6. rollback: needs a reason, goes back to the previous champion
    with pytest.raises(champion_alias.PromotionError, match="reason"):
        champion_alias.rollback(params, " ")
    assert champion_alias.rollback(params, "v4 misclassifies dogs in production")["to"] == v2
    assert champion(params) == v2

    # 7. forced promotion of the bad model: needs a reason, recorded; rollback undoes it
    with pytest.raises(champion_alias.PromotionError, match="reason"):
        champion_alias.force_promote(params, v3, "")
    champion_alias.force_promote(params, v3, "incident 42: hotfix model")
    assert champion(params) == v3
    assert champion_alias.rollback(params, "hotfix withdrawn")["to"] == v2

    moves = champion_alias.history(params)["moves"]
    assert [(m["action"], m["from"], m["to"]) for m in moves] == [
        ("first_champion", None, v2), ("promoted", v2, v4), ("rollback", v4, v2),
        ("forced", v2, v3), ("rollback", v3, v2)]
    assert moves[1]["challenger"]["accuracy"] > moves[1]["champion"]["accuracy"]
    assert moves[3]["reason"] == "incident 42: hotfix model"
    assert [m["at_ms"] for m in moves] == sorted(m["at_ms"] for m in moves)


def test_the_gate_keeps_a_versions_predictions_for_the_next_gate(registry):
    """What the gate predicted for a version on the test inputs is kept (transferline.gatecache): the
    next night's champion is not loaded and run again while it and the inputs are the same, and its
    figures are the ones a fresh scoring gives; other inputs, or an unreadable entry, score anew."""
    from transferline import gatecache, promotion

    params, project, model = registry
    v1 = register_weights(params, graded(model, 3), project)["version"]
    first = gate(params, v1)
    assert first["decision"] == "first_champion" and first["predictions_kept_from"] == {"challenger": None, "champion": None}

    v2 = register_weights(params, model, project)["version"]
    second = gate(params, v2)
    assert second["champion"]["version"] == v1 and second["decision"] == "promoted"
    assert second["predictions_kept_from"] == {"challenger": None, "champion": first["at"]}
    test = current_test_set()
    fresh = promotion.score_version(NAME, v1, test)
    assert {k: second["champion"][k] for k in fresh} == fresh
    assert f"The champion's predictions on these same inputs are the ones the gate made at {first['at']}" in \
        Path("reports/promote.md").read_text()

    # other inputs (one test image fewer): the champion is scored now
    v3 = register_weights(params, graded(model, 7), project)["version"]
    fewer = promotion.TestSet(test.x[:-1], test.y[:-1], test.path)
    report = promotion.run_gate(params, fewer, v3)
    assert report["champion"]["version"] == v2 and report["predictions_kept_from"]["champion"] is None
    assert report["decision"] == "kept"

    # the full inputs again: v2's predictions as challenger are kept; an unreadable entry scores anew
    assert gate(params, v3)["predictions_kept_from"]["champion"] == second["at"]
    import mlflow

    gatecache.entry_path(mlflow.MlflowClient(), NAME, v2, test.digest).write_text("{not json")
    again = gate(params, v3)
    assert again["predictions_kept_from"]["champion"] is None
    assert {k: again["champion"][k] for k in fresh} == {k: second["challenger"][k] for k in fresh}


def cli(project: Path, *args: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.Popen([sys.executable, "-m", "transferline.cli", *args], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_versions_scored_at_once_keep_their_own_weights(registry):
    """MLflow loads a model-from-code through a module global: two versions scored at the
    same time in one process must each be scored with their own weights (this race once
    left the racing test below with the worse champion)."""
    from concurrent.futures import ThreadPoolExecutor

    from transferline import promotion

    params, project, model = registry
    versions = [register_weights(params, m, project)["version"] for m in (graded(model, 7), model)]
    test = current_test_set()
    alone = [promotion.score_version(NAME, v, test) for v in versions]
    assert alone[0]["accuracy"] + 0.2 < alone[1]["accuracy"]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(4):
            assert list(pool.map(lambda v: promotion.score_version(NAME, v, test), versions)) == alone


def test_racing_gates_end_on_the_better_model(registry):
    """Two gates at once (threads here; processes against PostgreSQL in
    test_postgres_e2e.py), a worse and a better challenger, both better than the
    champion: the lock serialises them and the alias ends on the better one."""
    from concurrent.futures import ThreadPoolExecutor

    from transferline import champion as champion_alias
    from transferline import promotion

    params, project, model = registry
    v1 = register_weights(params, graded(model, 5), project)["version"]
    v2 = register_weights(params, graded(model, 3), project)["version"]
    v3 = register_weights(params, model, project)["version"]
    champion_alias.force_promote(params, v1, "race setup: start from the weakest")

    with ThreadPoolExecutor(2) as pool:
        reports = dict(zip((v2, v3), pool.map(lambda v: promotion.run_gate(params, current_test_set(), v), (v2, v3))))
    assert champion(params) == v3
    first, second = sorted(reports.values(), key=lambda r: r["lock"]["acquired_at"])
    assert {r["lock"]["kind"] for r in reports.values()} == {"file"}
    assert first["lock"]["released_at"] <= second["lock"]["acquired_at"], "the gates overlapped"
    # whoever went second was judged against the champion the first one left
    assert second["champion"]["version"] == first["champion_after"]
    assert reports[v2]["decision"] in ("promoted", "kept") and reports[v3]["decision"] == "promoted"

    # history through the CLI: the forced start and the moves of the race
    done = cli(project, "history", "--json")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    moves = json.loads(out)["moves"]
    assert moves[0]["action"] == "forced" and moves[-1]["to"] == v3


def test_rollback_without_reason_is_refused_by_the_cli(registry):
    params, project, model = registry
    done = cli(project, "rollback")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 2 and "--reason" in err


def test_status_after_a_rollback_names_the_new_champion_without_mlflow(registry, monkeypatch):
    """`transferline rollback` writes to the store; the `status` after it names the rolled-back-to
    version, read from the SQLite file without importing MLflow (transferline.storeview)."""
    from transferline import champion as champion_alias

    params, project, model = registry
    v1, v2 = (register_weights(params, m, project)["version"] for m in (graded(model, 5), model))
    champion_alias.force_promote(params, v1, "start")
    champion_alias.force_promote(params, v2, "next")
    done = cli(project, "rollback", "--reason", "incident 7")
    _, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    monkeypatch.setenv("PYTHONPROFILEIMPORTTIME", "1")  # `-X importtime` for the status process
    shown = cli(project, "status", "--json")
    out, err = shown.communicate(timeout=300)
    assert shown.returncode == 0, err[-3000:]
    assert json.loads(out)["champion"]["version"] == v1
    mlflow = who_imported(import_chains(err), "mlflow")
    assert mlflow is None, f"status imported mlflow after a rollback, via {mlflow}"
