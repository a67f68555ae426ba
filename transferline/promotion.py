"""The champion/challenger gate: score, decide, move the alias only on a win.

A new model version is a challenger. The gate scores it and the current
champion side by side on the current test split, both loaded from the
registry as MLflow pyfunc models and fed raw images (nothing is trusted from
old metrics; what a version predicted for these exact inputs is kept for
the next gate, transferline.gatecache), then moves the `champion` alias only
if the challenger passes every absolute threshold and beats the champion by
every margin in params.yaml `promote`. The decision and both sets of figures
go onto the challenger's version tags and into a report. The alias itself, its log,
forced moves and rollbacks are `transferline.champion`.

MLflow has no compare-and-set on aliases, so deciding and moving happen
under one lock (`transferline.locks`), and the champion is re-read inside it:
two gates racing end with the alias on the better model.

Callable without Prefect; tasks/promote.py and `transferline promote` use it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from transferline.champion import (  # PromotionError: tasks/promote.py imports it from here
    CLASSES_TAG,
    TAG,
    PromotionError,
    check_version,
    current_champion,
    latest_version,
    move_alias,
    now,
)
from transferline import gatecache
from transferline.config import MetricGate, Params
from transferline.dvcexp import skip_in_experiment
from transferline.errors import StageError
from transferline.io import read_json, write_json
from transferline.metrics import classification_scores, difference_statement, paired_gain_interval
from transferline.paths import Paths

log = logging.getLogger(__name__)

EPS = 1e-9  # figures are rounded to 5 decimals; a margin met exactly is met


@dataclass(frozen=True)
class TestSet:
    x: np.ndarray  # raw uint8 images or raw strings, as a client would send them
    y: list[str]  # class names
    path: str

    @property
    def n(self) -> int:
        return len(self.y)

    @cached_property
    def digest(self) -> str:
        """The raw inputs' digest (transferline.gatecache): hashed once a gate, for both sides."""
        return gatecache.inputs_digest(self.x)


# MLflow loads a "model from code" by running the file and reading back the model it set in a
# module global (mlflow.models.set_model): two loads at once in one process can hand both
# callers the same object, so one version gets scored with the other's weights.
_PYFUNC_LOAD = threading.Lock()


def predicted_by(name: str, version: str, test: TestSet) -> list[str]:
    """Load `models:/name/version` as a pyfunc; its predicted class names for the raw test inputs."""
    import mlflow

    uri = f"models:/{name}/{version}"
    try:
        with _PYFUNC_LOAD:
            model = mlflow.pyfunc.load_model(uri)
        raw = test.x.tolist() if test.x.dtype == object else test.x  # strings go as a list, images as an array
        return [str(p) for p in model.predict(raw)]
    except Exception as err:  # a broken or incompatible model: say which one
        raise PromotionError(f"{uri} cannot score the current test split: {_reason(err)}") from err


def score_version(name: str, version: str, test: TestSet) -> dict[str, float]:
    """`models:/name/version`'s scores on the raw test inputs."""
    return classification_scores(test.y, predicted_by(name, version, test))


def _reason(err: Exception) -> str:
    """An error in a line: MLflow's schema errors start with the whole input array, printed."""
    text = str(err)
    if "Failed to enforce schema" in text and "Error: " in text:
        text = text.rsplit("Error: ", 1)[1]
    return " ".join(text.split())[:300]


def decide(gates: dict[str, MetricGate], challenger: dict[str, float],
           champion: dict[str, float] | None) -> tuple[str, str, list[dict]]:
    """(decision, reason, per-metric checks). Pure: figures in, verdict out."""
    checks = []
    for metric, gate in gates.items():
        value = challenger[metric]
        row: dict[str, Any] = {"metric": metric, "challenger": value, "min": gate.min,
                               "passes_min": value >= gate.min - EPS}
        if champion is not None:
            required = max(gate.margin_abs, gate.margin_rel * champion[metric])
            delta = round(value - champion[metric], 5)
            row.update(champion=champion[metric], delta=delta, required_delta=round(required, 5),
                       beats=delta >= required - EPS)
        checks.append(row)
    below = [f"{c['metric']} {c['challenger']:.4f} < {c['min']:.4f}" for c in checks if not c["passes_min"]]
    if champion is None:
        if below:
            return "rejected", "no champion yet, and the challenger fails the absolute thresholds: " + "; ".join(below), checks
        return "first_champion", "no champion yet; the challenger passes every absolute threshold", checks
    if below:
        return "kept", "challenger fails the absolute thresholds: " + "; ".join(below), checks
    short = [f"{c['metric']} {c['delta']:+.4f} < required {c['required_delta']:+.4f}" for c in checks if not c["beats"]]
    if short:
        return "kept", "challenger does not beat the champion by the margin: " + "; ".join(short), checks
    gains = ", ".join(f"{c['metric']} {c['delta']:+.4f}" for c in checks)
    return "promoted", f"challenger passes the thresholds and beats the champion ({gains})", checks


def _force(version: str) -> str:
    return f"`transferline promote --force --version {version} --reason ...` if it should be champion anyway"


def cannot_decide(client: Any, name: str, version: str, champion_version: str | None, test: TestSet,
                  min_test_size: int) -> str | None:
    """Why the gate may not move the alias on its own, or None: a test split too small to
    tell, or a challenger whose label set is not the champion's (a model scores 0 on classes
    it never knew, so the comparison says nothing). `transferline promote --force` still can."""
    force = _force(version)
    if test.n < min_test_size:
        return (f"the test split {test.path} has {test.n} examples, fewer than promote.min_test_size={min_test_size}: "
                f"too few to decide; add data, or {force}")
    if champion_version is None:
        return None
    labels = {v: client.get_model_version(name, v).tags.get(CLASSES_TAG) for v in (version, champion_version)}
    if None in labels.values():  # registered before versions carried their label set: the test split's must do
        champion_set = labels[champion_version]
        return None if champion_set is None or set(json.loads(champion_set)) == set(test.y) else \
            f"the champion (version {champion_version}) knows classes {json.loads(champion_set)}, the test split " \
            f"holds {sorted(set(test.y))}: they cannot be compared; {force}"
    theirs, ours = json.loads(labels[champion_version]), json.loads(labels[version])
    if sorted(theirs) != sorted(ours):
        return (f"the challenger's classes {ours} are not the champion's (version {champion_version}) {theirs}: "
                f"they cannot be compared; {force}")
    return None


# -- the decision's records ---------------------------------------------------

def redact(uri: str) -> str:
    """A URI without its password, fit for a report."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _tag_version(client: Any, name: str, version: str, report: dict) -> None:
    tags = {"decision": report["decision"], "reason": report["reason"][:5000], "at": report["at"],
            "champion_version": str((report["champion"] or {}).get("version", "none"))}
    for side in ("challenger", "champion"):
        for metric, value in (report[side] or {}).items():
            if metric != "version":
                tags[f"{side}.{metric}"] = f"{value:.5f}"
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), TAG + key, value)


def _card_decision(client: Any, name: str, version: str, report: dict) -> None:
    """Write the decision into the version's model card (transferline.card); the tags above are the record."""
    from mlflow.exceptions import MlflowException

    from transferline import card

    try:
        mv = client.get_model_version(name, version)
        card.publish(client, name, version, mv.run_id, card.with_decision(mv.description or "", report))
    except MlflowException as err:
        log.warning("%s version %s: the model card keeps 'pending' (%s); the decision is in its tags", name, version, err)


# -- the gate ----------------------------------------------------------------

def run_gate(params: Params, test: TestSet, version: str | None = None) -> dict:
    """Score `version` (default: the newest) against the champion on `test` (the
    modality's current test split); move the alias if it wins.

    Returns the report (see write_report). The champion is read, scored and
    replaced under the gate lock, so concurrent gates serialise.
    """
    import mlflow

    from transferline import tracking
    from transferline.locks import gate_lock

    t0, at = time.perf_counter(), now()  # `at`: the report's time, and the stamp of predictions it keeps
    tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    name = params.model_name
    current_champion(client, name)  # fails clearly if the model does not exist
    version = str(version or latest_version(client, name))
    check_version(client, name, version)
    gates = params.promote.metrics
    t1 = time.perf_counter()
    # outside the lock: it does not depend on the champion; kept for the night it is the champion
    challenger_says, challenger_kept = gatecache.kept_or_predicted(
        client, name, version, test, at, lambda: predicted_by(name, version, test))
    challenger = classification_scores(test.y, challenger_says)
    timings = {"challenger_scoring_s": round(time.perf_counter() - t1, 3)}
    kept = {"challenger": challenger_kept, "champion": None}  # when the gate made predictions it reused
    with gate_lock(params.promote, name) as lock:
        champion_version = current_champion(client, name)  # re-read inside the lock
        t2 = time.perf_counter()
        refusal = cannot_decide(client, name, version, champion_version, test, params.promote.min_test_size)
        interval = None
        if champion_version == version:
            decision, reason, checks = "already_champion", f"version {version} is already the champion", []
            champion = dict(challenger)
        else:
            unscored = None
            try:
                champion = None
                if champion_version:  # scored on this test split, with how sure the accuracy difference is
                    champion_says, kept["champion"] = gatecache.kept_or_predicted(
                        client, name, champion_version, test, at, lambda: predicted_by(name, champion_version, test))
                    champion = classification_scores(test.y, champion_says)
                    interval = paired_gain_interval(test.y, challenger_says, champion_says)
            except PromotionError as err:  # e.g. greyscale before, colour now: no comparison on current data
                champion, unscored = None, (f"the champion (version {champion_version}) cannot take the current "
                                            f"test split, so they cannot be compared ({err}); {_force(version)}")
            decision, reason, checks = decide(gates, challenger, champion)
            if unscored:
                decision, reason = "kept", unscored
            elif refusal and decision in ("promoted", "first_champion"):
                decision, reason = ("kept" if champion_version else "rejected"), refusal
        timings["champion_scoring_s"] = round(time.perf_counter() - t2, 3)
        report = {
            "decision": decision,
            "reason": reason,
            "model": name,
            "challenger": {"version": version, **challenger},
            "champion": None if champion_version is None else {"version": champion_version, **(champion or {})},
            "checks": checks,
            "accuracy_difference_ci95": interval,  # challenger minus champion; None without a scored champion
            "test_set": {"path": test.path, "n": test.n},
            "predictions_kept_from": kept,  # per side: when the gate predicted these inputs (gatecache), or None: now
            "tracking_uri": redact(mlflow.get_tracking_uri()),
            "at": at,
        }
        if decision in ("promoted", "first_champion"):
            figures = {"challenger": report["challenger"], "champion": report["champion"]}
            move_alias(client, name, version, decision, reason, champion_version, figures)
            champion_version = version
        report["champion_after"] = champion_version
        _tag_version(client, name, version, report)
        lock_info = lock.info()
    _card_decision(client, name, version, report)
    report["lock"] = lock_info
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["timings"] = timings
    log.info("%s version %s: %s (%s); champion is %s", name, version, decision, reason, champion_version)
    if interval is not None:
        log.info(difference_statement("challenger minus champion in accuracy:",
                                      round(challenger["accuracy"] - champion["accuracy"], 5), interval, test.n))
    return report


# -- the readable report -----------------------------------------------------

def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown(report: dict) -> str:
    ch, champ = report["challenger"], report["champion"]
    lines = [
        f"# Promotion gate: {report['model']}",
        "",
        f"**Decision: {report['decision']}**: {report['reason']}.",
        "",
        f"Challenger: version {ch['version']}; champion before: "
        f"{'version ' + str(champ['version']) if champ else 'none'}; champion after: version "
        f"{report['champion_after'] or 'none'}.",
        f"Both scored on {report['test_set']['path']} ({report['test_set']['n']} images) as MLflow pyfunc "
        f"models from {report['tracking_uri']}, at {report['at']}.",
        "",
    ]
    for side, at in (report.get("predictions_kept_from") or {}).items():
        if at:
            lines += [f"The {side}'s predictions on these same inputs are the ones the gate made at {at} "
                      "(the same registered version: kept in .transferline/gatecache).", ""]
    if report["checks"]:
        lines += ["| metric | challenger | champion | delta | required delta | min | passes min | beats |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in report["checks"]:
            lines.append("| " + " | ".join(_fmt(c.get(k)) for k in (
                "metric", "challenger", "champion", "delta", "required_delta", "min", "passes_min", "beats")) + " |")
    if (interval := report.get("accuracy_difference_ci95")) is not None:
        delta = round(ch["accuracy"] - champ["accuracy"], 5)
        lines += ["", difference_statement("Challenger minus champion in accuracy:", delta, interval,
                                           report["test_set"]["n"]) + "."]
    seconds = report.get("seconds")
    if seconds is not None:
        lines += ["", f"Gate time: {seconds:.2f} s (lock: {report['lock']['kind']}, "
                      f"waited {report['lock']['waited_s']:.2f} s)."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, json_path: Path, md_path: Path) -> None:
    write_json(json_path, report)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(report))


def promote_registered(params: Params, paths: Paths, load_test: Callable[[Paths], TestSet]) -> dict:
    """The promote stage, for either modality: gate the version register just made
    (reports/register.json) on the test split `load_test` reads; write the reports.
    In a DVC experiment nothing is gated (transferline/dvcexp.py)."""
    if (skipped := skip_in_experiment("promote", paths.reports)) is not None:
        return skipped
    registered = paths.report("register")
    if not registered.is_file():
        raise StageError(f"{registered} not found; run the register stage first (dvc repro register)")
    info = read_json(registered)
    if info.get("name") != params.model_name:
        raise StageError(f"{registered} is for model {info.get('name')!r}, params.yaml register.{params.modality}."
                         f"model_name is {params.model_name!r}; re-run the register stage")
    from transferline.locks import LockTimeout

    try:
        report = run_gate(params, load_test(paths), str(info["version"]))
    except (PromotionError, LockTimeout) as err:
        raise StageError(str(err)) from None
    write_report(report, paths.report("promote"), paths.reports / "promote.md")
    return report
