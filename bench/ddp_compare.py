"""A small image run with 1 and with N training processes: accuracies and wall time.

    uv run python bench/ddp_compare.py --procs 1 2 [--out bench/results/ddp_compare.json]

Each run is a fresh project (tests/kit/scaffold.make_project) on the built-in
data, shrunk (source_max_samples 4000, 2 pretrain epochs, 10 finetune epochs,
the default label budget). ingest..preprocess run once per project untimed;
pretrain and finetune are timed as `python -m tasks.<stage>`, the command DVC
runs, so with nproc_per_node > 1 they go through torchrun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kit.scaffold import make_project  # noqa: E402

SHRINK = {"split": {"source_max_samples": 4000}, "pretrain": {"epochs": 2}, "finetune": {"epochs": 10}}


def raw_params(procs: int) -> dict:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in SHRINK.items():
        raw[section]["image"].update(values)
    raw["device"] = "cpu"
    if procs > 1:
        raw["distributed"] = {**raw.get("distributed", {}), "nproc_per_node": procs}
    return raw


def stage(project: Path, name: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", f"tasks.{name}"], cwd=project, capture_output=True, text=True,
                          env={**os.environ, "TRANSFERLINE_DOWNLOADS": str(ROOT / ".transferline/downloads")})
    if done.returncode:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1)


def one(procs: int, tmp: Path) -> dict:
    project = make_project(tmp / f"p{procs}", raw_params(procs))
    for name in ("ingest", "validate", "split", "preprocess"):
        stage(project, name)
    seconds = {name: stage(project, name) for name in ("pretrain", "finetune")}
    stage(project, "evaluate")
    metrics = json.loads((project / "reports/metrics.json").read_text())
    history = json.loads((project / "reports/pretrain_history.json").read_text())
    return {"procs": procs, "seconds": seconds, "pretrain_val_acc": history[-1]["val_acc"],
            "world_size": history[-1].get("world_size", 1),
            "test_accuracy": {k: metrics[k]["accuracy"] for k in ("finetune", "scratch")}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [one(p, Path(tmp)) for p in args.procs]
    print(json.dumps(rows, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"cpu_count": os.cpu_count(), "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
