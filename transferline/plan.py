"""What a run would do, and why, before it does anything: `transferline run --dry-run`.

DVC alone decides staleness: `dvc status --json` compares every stage's deps,
params and outs with dvc.lock. A `--set` not yet written is a params change
DVC cannot see, so the stages that list the key's section (dvc.yaml
`params`, templates resolved from params.yaml) are added, and with them the
stages downstream of their outputs. No torch, Prefect or MLflow here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml


def dvc_status() -> dict:
    """`dvc status --json`: stages whose deps, params or outs differ from dvc.lock ({} = none)."""
    done = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"dvc status failed: {done.stderr.strip()[-1000:]}")
    return json.loads(done.stdout or "{}")


def _locked_stages(lock: str | Path = "dvc.lock") -> set[str]:
    path = Path(lock)
    if not path.is_file():
        return set()
    return set((yaml.safe_load(path.read_text()) or {}).get("stages") or {})


def describe(changes: dict, most: int = 4) -> list[str]:
    """{'ingest': [{'changed deps': {'data/external/image': 'modified'}}]} -> ['ingest: data/external/image modified'];
    a stage dvc.lock does not hold yet is "never run"; long lists keep their first `most` entries."""
    locked = _locked_stages()
    lines = []
    for stage, entries in changes.items():
        if stage not in locked:
            lines.append(f"{stage}: never run (not in dvc.lock yet)")
            continue
        parts = []
        for entry in entries:
            if isinstance(entry, dict):
                for what in entry.values():
                    parts += [f"{path} {how}" for path, how in what.items()] if isinstance(what, dict) else [str(what)]
            else:
                parts.append(str(entry))
        more = f" (+{len(parts) - most} more)" if len(parts) > most else ""
        lines.append(f"{stage}: {', '.join(parts[:most])}{more}")
    return lines


def _names(entries: list[Any] | None) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries or []]


def stage_specs(raw: dict, dvc_yaml: str | Path = "dvc.yaml") -> dict[str, dict]:
    """dvc.yaml's stages with `${...}` filled in from the params dict `raw`."""
    from transferline.runlog import resolve

    return {name: resolve(spec, raw) for name, spec in yaml.safe_load(Path(dvc_yaml).read_text())["stages"].items()}


def _covers(section: str, key: str) -> bool:
    return key == section or key.startswith(section + ".")


def affected(keys: list[str], raw: dict, dvc_yaml: str | Path = "dvc.yaml") -> dict[str, str]:
    """{stage: why} for every stage a change of `keys` makes stale: the readers of
    the keys (in `raw`, the params after the change), then what depends on their outputs."""
    specs = stage_specs(raw, dvc_yaml)
    why: dict[str, str] = {}
    for stage, spec in specs.items():
        hit = [k for k in keys if any(_covers(s, k) for s in _names(spec.get("params")))]
        if hit:
            why[stage] = f"reads {', '.join(hit)}"
    for stage, spec in specs.items():  # dvc.yaml's order is a topological order (tests/test_dag.py)
        if stage in why:
            continue
        deps = [Path(d) for d in _names(spec.get("deps"))]
        for upstream in list(why):
            outs = [Path(o) for o in _names(specs[upstream].get("outs")) + _names(specs[upstream].get("metrics"))]
            if any(d == o or o in d.parents or d in o.parents for d in deps for o in outs):
                why[stage] = f"uses the outputs of {upstream} (reruns if they change)"
                break
    return why
