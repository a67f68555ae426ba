"""The `champion` alias and its log: who holds it, every move, forced moves and rollbacks.

Every alias move goes through `move_alias`, which points the alias and
appends the move to a log kept as tags on the registered model, so `history`
and `rollback` work on any tracking server. MLflow has no compare-and-set on
aliases: callers move it under the gate lock (`transferline.locks`) and
re-read the champion inside it. The gate that decides a move on figures is
`transferline.promotion`.

Callable without Prefect; `transferline promote --force`, `rollback` and
`history` use it.
"""

from __future__ import annotations

import getpass
import json
import logging
import time
from datetime import datetime, timezone
from typing import Any

from transferline.config import Params
from transferline.errors import mlflow_error_code
from transferline.storeview import read_registry

log = logging.getLogger(__name__)

CHAMPION = "champion"
HISTORY_PREFIX = "champion_history/"  # registered-model tag keys, one per alias move
TAG = "promote."  # version tag prefix for gate decisions (and forced moves)
CLASSES_TAG = "classes"  # a version's label set (JSON list), set by register; the gate compares them


class PromotionError(RuntimeError):
    """The gate or an alias move cannot go on; the message says what is wrong and how to fix it."""


def now() -> str:
    """UTC now, to the second, as the history and the reports write it."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def _uri() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def current_champion(client: Any, name: str) -> str | None:
    """The version `champion` points at (None: no champion yet); fails clearly if `name` is not registered."""
    try:
        version = client.get_registered_model(name).aliases.get(CHAMPION)
    except Exception as err:
        if mlflow_error_code(err) == "RESOURCE_DOES_NOT_EXIST":
            raise PromotionError(f"no registered model {name!r} in {_uri()}; run the register stage first") from None
        raise
    return None if version is None else str(version)


def check_version(client: Any, name: str, version: str) -> None:
    """Fail clearly if `name` has no `version`."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise PromotionError(f"{name} has no version {version} in {_uri()}") from None


def latest_version(client: Any, name: str) -> str:
    """The newest registered version of `name`."""
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise PromotionError(f"no versions of {name!r} in {_uri()}; run the register stage first")
    return str(max(int(v.version) for v in versions))


def read_history(client: Any, name: str) -> list[dict]:
    """Every alias move, oldest first."""
    tags = client.get_registered_model(name).tags or {}
    entries = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(HISTORY_PREFIX)]
    return sorted(entries, key=lambda e: (e["at_ms"], e["seq"]))


def move_alias(client: Any, name: str, to: str, action: str, reason: str, frm: str | None,
               figures: dict | None = None) -> dict:
    """Point `champion` at `to` and append the move to the log. Call under the gate lock."""
    seq = len(read_history(client, name))
    at_ms = int(time.time() * 1000)
    entry = {"at": now(), "at_ms": at_ms, "seq": seq, "action": action, "from": frm, "to": str(to),
             "reason": reason, "by": _user(), **(figures or {})}
    client.set_registered_model_alias(name, CHAMPION, str(to))
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{at_ms:013d}-{seq:05d}", json.dumps(entry))
    client.set_model_version_tag(name, str(to), "champion.since", entry["at"])
    return entry


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
    check_version(client, name, version)
    with gate_lock(params.promote, name):
        before = current_champion(client, name)
        entry = move_alias(client, name, str(version), "forced", reason.strip(), before)
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
        entry = move_alias(client, name, previous, "rollback", reason.strip(), current)
        client.set_model_version_tag(name, current, "champion.rolled_back", f"{entry['at']}: {reason.strip()[:4000]}")
    log.warning("%s: champion rolled back from %s to %s (%s)", name, current, previous, reason)
    return entry


def history(params: Params) -> dict:
    """{"model", "champion", "moves": [...]} from the registry (a local SQLite store read without
    MLflow when it can be: transferline.storeview)."""
    name = params.model_name
    return read_registry(params.tracking, lambda client: {
        "model": name, "champion": current_champion(client, name), "moves": read_history(client, name)})
