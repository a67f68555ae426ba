"""The champion/challenger gate, rollback and the alias history.

A new model version is a challenger. The gate scores it and the current
champion side by side on the current test split, both loaded from the
registry as MLflow pyfunc models and fed raw images (nothing is trusted from
old metrics), then moves the `champion` alias only if the challenger passes
every absolute threshold and beats the champion by every margin in
params.yaml `promote`. The decision and both sets of figures go onto the
challenger's version tags and into a report; every alias move is appended to
a log kept as tags on the registered model, so `history` and `rollback` work
on any tracking server.

MLflow has no compare-and-set on aliases, so deciding and moving happen
under one lock (`transferline.locks`), and the champion is re-read inside it:
two gates racing end with the alias on the better model.

Callable without Prefect; tasks/promote.py and `transferline promote` use it.
"""

from __future__ import annotations

import getpass
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from transferline.config import MetricGate, Params
from transferline.paths import Paths
from transferline.errors import StageError
from transferline.io import read_json, write_json
from transferline.metrics import classification_scores

log = logging.getLogger(__name__)

CHAMPION = "champion"
HISTORY_PREFIX = "champion_history/"  # registered-model tag keys, one per alias move
TAG = "promote."  # version tag prefix for gate decisions
EPS = 1e-9  # figures are rounded to 5 decimals; a margin met exactly is met


class PromotionError(RuntimeError):
    """The gate cannot decide; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class TestSet:
    x: np.ndarray  # raw uint8 images or raw strings, as a client would send them
    y: list[str]  # class names
    path: str

    @property
    def n(self) -> int:
        return len(self.y)


# MLflow loads a "model from code" by running the file and reading back the model it set in a
# module global (mlflow.models.set_model): two loads at once in one process can hand both
# callers the same object, so one version gets scored with the other's weights.
_PYFUNC_LOAD = threading.Lock()


def score_version(name: str, version: str, test: TestSet) -> dict[str, float]:
    """Load `models:/name/version` as a pyfunc and score it on raw test images."""
    import mlflow

    uri = f"models:/{name}/{version}"
    try:
        with _PYFUNC_LOAD:
            model = mlflow.pyfunc.load_model(uri)
        raw = test.x.tolist() if test.x.dtype == object else test.x  # strings go as a list, images as an array
        predicted = [str(p) for p in model.predict(raw)]
    except Exception as err:  # a broken or incompatible model: say which one
        raise PromotionError(f"{uri} cannot score the current test split: {err}") from err
    return classification_scores(test.y, predicted)


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


# -- registry helpers --------------------------------------------------------

def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def current_champion(client: Any, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_registered_model(name).aliases.get(CHAMPION)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise PromotionError(f"no registered model {name!r} in {_uri()}; run the register stage first") from None
        raise
    return None if version is None else str(version)


def redact(uri: str) -> str:
    """A URI without its password, fit for a report."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def _check_version(client: Any, name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise PromotionError(f"{name} has no version {version} in {_uri()}") from None


def latest_version(client: Any, name: str) -> str:
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise PromotionError(f"no versions of {name!r} in {_uri()}; run the register stage first")
    return str(max(int(v.version) for v in versions))


def read_history(client: Any, name: str) -> list[dict]:
    """Every alias move, oldest first."""
    tags = client.get_registered_model(name).tags or {}
    entries = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(HISTORY_PREFIX)]
    return sorted(entries, key=lambda e: (e["at_ms"], e["seq"]))


def _move(client: Any, name: str, to: str, action: str, reason: str, frm: str | None,
          figures: dict | None = None) -> dict:
    """Point `champion` at `to` and append the move to the log. Call under the gate lock."""
    seq = len(read_history(client, name))
    at_ms = int(time.time() * 1000)
    entry = {"at": _now(), "at_ms": at_ms, "seq": seq, "action": action, "from": frm, "to": str(to),
             "reason": reason, "by": _user(), **(figures or {})}
    client.set_registered_model_alias(name, CHAMPION, str(to))
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{at_ms:013d}-{seq:05d}", json.dumps(entry))
    client.set_model_version_tag(name, str(to), "champion.since", entry["at"])
    return entry


def _tag_version(client: Any, name: str, version: str, report: dict) -> None:
    tags = {"decision": report["decision"], "reason": report["reason"][:5000], "at": report["at"],
            "champion_version": str((report["champion"] or {}).get("version", "none"))}
    for side in ("challenger", "champion"):
        for metric, value in (report[side] or {}).items():
            if metric != "version":
                tags[f"{side}.{metric}"] = f"{value:.5f}"
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), TAG + key, value)


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

    t0 = time.perf_counter()
    tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    name = params.model_name
    current_champion(client, name)  # fails clearly if the model does not exist
    version = str(version or latest_version(client, name))
    _check_version(client, name, version)
    gates = params.promote.metrics
    t1 = time.perf_counter()
    challenger = score_version(name, version, test)  # outside the lock: it does not depend on the champion
    timings = {"challenger_scoring_s": round(time.perf_counter() - t1, 3)}
    with gate_lock(params.promote, name) as lock:
        champion_version = current_champion(client, name)  # re-read inside the lock
        t2 = time.perf_counter()
        if champion_version == version:
            decision, reason, checks = "already_champion", f"version {version} is already the champion", []
            champion = dict(challenger)
        else:
            champion = score_version(name, champion_version, test) if champion_version else None
            decision, reason, checks = decide(gates, challenger, champion)
        timings["champion_scoring_s"] = round(time.perf_counter() - t2, 3)
        report = {
            "decision": decision,
            "reason": reason,
            "model": name,
            "challenger": {"version": version, **challenger},
            "champion": None if champion is None else {"version": champion_version, **champion},
            "checks": checks,
            "test_set": {"path": test.path, "n": test.n},
            "tracking_uri": redact(mlflow.get_tracking_uri()),
            "at": _now(),
        }
        if decision in ("promoted", "first_champion"):
            figures = {"challenger": report["challenger"], "champion": report["champion"]}
            _move(client, name, version, decision, reason, champion_version, figures)
            champion_version = version
        report["champion_after"] = champion_version
        _tag_version(client, name, version, report)
        lock_info = lock.info()
    report["lock"] = lock_info
    report["seconds"] = round(time.perf_counter() - t0, 3)
    report["timings"] = timings
    log.info("%s version %s: %s (%s); champion is %s", name, version, decision, reason, champion_version)
    return report


def force_promote(params: Params, version: str, reason: str) -> dict:
    """Make `version` champion without the gate; the reason is required and logged."""
    import mlflow

    from transferline import tracking
    from transferline.locks import gate_lock

    if not reason or not reason.strip():
        raise PromotionError("a forced promotion needs a reason (--reason '...')")
    tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    name = params.model_name
    current_champion(client, name)
    _check_version(client, name, version)
    with gate_lock(params.promote, name):
        before = current_champion(client, name)
        entry = _move(client, name, str(version), "forced", reason.strip(), before)
        client.set_model_version_tag(name, str(version), TAG + "decision", "forced")
        client.set_model_version_tag(name, str(version), TAG + "reason", reason.strip()[:5000])
        client.set_model_version_tag(name, str(version), TAG + "at", entry["at"])
    log.warning("%s: champion forced from %s to %s (%s)", name, before, version, reason)
    return entry


def champion_stack(history: list[dict], current: str | None) -> list[str]:
    """The chain of champions still standing: promotions push, rollbacks pop."""
    stack: list[str] = []
    for entry in history:
        if entry["action"] == "rollback":
            if stack and stack[-1] == entry["from"]:
                stack.pop()
            if not stack or stack[-1] != entry["to"]:
                stack.append(entry["to"])
        else:
            stack.append(entry["to"])
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)  # moved outside transferline (UI, API): still the one to roll back from
    return stack


def rollback(params: Params, reason: str) -> dict:
    """Move `champion` back to the champion before the current one."""
    import mlflow

    from transferline import tracking
    from transferline.locks import gate_lock

    if not reason or not reason.strip():
        raise PromotionError("a rollback needs a reason (--reason '...')")
    tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    name = params.model_name
    current_champion(client, name)
    with gate_lock(params.promote, name):
        current = current_champion(client, name)
        stack = champion_stack(read_history(client, name), current)
        if current is None or len(stack) < 2:
            raise PromotionError(f"{name} has no previous champion to roll back to (champion: {current or 'none'})")
        previous = stack[-2]
        entry = _move(client, name, previous, "rollback", reason.strip(), current)
        client.set_model_version_tag(name, current, "champion.rolled_back", f"{entry['at']}: {reason.strip()[:4000]}")
    log.warning("%s: champion rolled back from %s to %s (%s)", name, current, previous, reason)
    return entry


def history(params: Params) -> dict:
    """{"model", "champion", "moves": [...]} from the registry."""
    import mlflow

    from transferline import tracking

    tracking.configure(params.tracking)
    client = mlflow.MlflowClient()
    name = params.model_name
    return {"model": name, "champion": current_champion(client, name), "moves": read_history(client, name)}


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
        f"Both scored now on {report['test_set']['path']} ({report['test_set']['n']} images) as MLflow pyfunc "
        f"models from {report['tracking_uri']}, at {report['at']}.",
        "",
    ]
    if report["checks"]:
        lines += ["| metric | challenger | champion | delta | required delta | min | passes min | beats |",
                  "|---|---|---|---|---|---|---|---|"]
        for c in report["checks"]:
            lines.append("| " + " | ".join(_fmt(c.get(k)) for k in (
                "metric", "challenger", "champion", "delta", "required_delta", "min", "passes_min", "beats")) + " |")
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
    (reports/register.json) on the test split `load_test` reads; write the reports."""
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
