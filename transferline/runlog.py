"""Record a stage in MLflow from what dvc.yaml says it produced.

dvc.yaml already lists each stage's params sections, metrics and plots; this
module reads that list instead of repeating it: params become MLflow params,
metrics files become metrics, per-epoch histories become stepped metrics,
PNG plots become artifacts.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import yaml


def _names(entries: list[Any] | None) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}"""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


TEMPLATE = re.compile(r"\$\{([\w.]+)\}")


def resolve(value: Any, params_raw: dict) -> Any:
    """dvc.yaml's `${a.b}` filled in from params.yaml, as DVC does (plain keys only)."""
    if isinstance(value, str):
        def lookup(match: re.Match) -> str:
            out: Any = params_raw
            for part in match.group(1).split("."):
                out = out[part]
            return str(out)

        return TEMPLATE.sub(lookup, value)
    if isinstance(value, list):
        return [resolve(v, params_raw) for v in value]
    if isinstance(value, dict):
        return {resolve(k, params_raw): resolve(v, params_raw) for k, v in value.items()}
    return value


def read_yaml(path: str | Path) -> Any:
    """`path` parsed (libyaml's loader), read again only when the file changes: a run records
    nine stages from the same dvc.yaml and params.yaml. Shared: never modify what it returns."""
    stat = Path(path).stat()
    return _parsed(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)  # one cache for every project


@functools.lru_cache(maxsize=8)
def _parsed(path: str, mtime_ns: int, size: int) -> Any:
    return yaml.load(Path(path).read_text(), Loader=yaml.CSafeLoader)


def stage_spec(stage: str, params_raw: dict, dvc_yaml: str | Path = "dvc.yaml") -> dict[str, Any]:
    """The stage as DVC runs it: templates filled in from params.yaml."""
    return resolve(read_yaml(dvc_yaml)["stages"][stage], params_raw)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def log_stage(client: Any, run_id: str, stage: str, params_raw: dict, ran: bool, seconds: float) -> None:
    """Log params, metrics, histories and plots of `stage` to run `run_id`."""
    from mlflow.entities import Metric, Param, RunTag  # here: `resolve` serves the light CLI (transferline.plan)

    spec = stage_spec(stage, params_raw)
    now = int(time.time() * 1000)
    params: dict[str, Any] = {}
    for section in _names(spec.get("params")):
        value: Any = params_raw
        for part in section.split("."):
            value = value[part]
        params.update(flatten(value, f"{section}."))
    metrics = [Metric("stage_seconds", seconds, now, 0)]
    for path in map(Path, _names(spec.get("metrics"))):
        if path.is_file():
            flat = flatten(json.loads(path.read_text()))
            metrics += [Metric(k, float(v), now, 0) for k, v in flat.items() if _number(v)]
    for path in map(Path, _names(spec.get("plots"))):
        if path.is_dir():
            client.log_artifacts(run_id, str(path), "plots")
        elif path.suffix == ".json" and path.is_file():
            name = path.stem.removesuffix("_history")
            for row in json.loads(path.read_text()):
                step = int(row["epoch"])
                metrics += [Metric(f"{name}.{k}", float(v), now, step) for k, v in row.items() if k != "epoch" and _number(v)]
            client.log_artifact(run_id, str(path), "history")
    items = [Param(k, str(v)) for k, v in params.items()]
    tags = [RunTag("stage.status", "ran" if ran else "skipped")]
    # as few writes as the limits allow (a skipped stage: one): log_batch takes at most 100
    # params, 100 tags and 1000 entries in all per call
    for i in range(max(1, math.ceil(len(metrics) / 900), math.ceil(len(items) / 100))):
        client.log_batch(run_id, metrics=metrics[i * 900 : (i + 1) * 900], params=items[i * 100 : (i + 1) * 100],
                         tags=tags if i == 0 else [])
