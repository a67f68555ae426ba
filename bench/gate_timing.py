"""Benchmark: wall time of one promotion-gate decision.

Builds a small real registry in a throw-away folder (a SmallCNN fitted on
real Animal-MNIST images and weaker copies of it, tests/kit/challengers.py),
registers them through the real register stage, then times the gate
(transferline.promotion.run_gate): one first-champion decision, REPEAT
decisions that keep the champion (a worse challenger), and one promotion.
Each decision loads both models from the registry as pyfunc models and scores
them on the 300-image test split. Writes bench/results/gate_timing[-LABEL].json.

    uv run python bench/gate_timing.py                       # SQLite registry (the default store)
    source DIR/env && uv run python bench/gate_timing.py --label postgres   # after scripts/mlflow-postgres.sh start DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test kit is not installed
from kit.scaffold import ROOT  # noqa: E402

RESULTS = ROOT / "bench/results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="gate decisions that keep the champion")
    parser.add_argument("--label", default="", help="suffix of the results file (e.g. postgres)")
    args = parser.parse_args()

    from tasks.ingest import load_animal_mnist
    from kit.challengers import graded, make_gate_project, register_weights
    from transferline.config import parse_params
    from transferline.promotion import redact, run_gate

    # read before anything runs: mlflow.set_tracking_uri() writes this variable itself
    server = os.environ.get("MLFLOW_TRACKING_URI")
    work = Path(tempfile.mkdtemp(prefix="transferline-gate-bench-"))
    x, y = load_animal_mnist()
    model, test = make_gate_project(work, x, y)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"] = {"uri": f"sqlite:///{work / 'mlflow.db'}", "artifact_root": str(work / "mlartifacts"),
                       "experiment": "gate-bench"}
    raw["register"] = {"model_name": "gate-bench"}
    raw["promote"]["metrics"] = {"accuracy": {"min": 0.3, "margin_abs": 0.01}, "macro_f1": {"min": 0.0}}
    params = parse_params(raw)
    medium, worse = (register_weights(params, graded(model, k), work)["version"] for k in (3, 6))
    best = register_weights(params, model, work)["version"]

    first = run_gate(params, medium, test)
    kept = [run_gate(params, worse, test) for _ in range(args.repeat)]
    promoted = run_gate(params, best, test)
    assert first["decision"] == "first_champion" and promoted["decision"] == "promoted", (first, promoted)
    assert all(r["decision"] == "kept" for r in kept)
    pick = lambda r: {k: r[k] for k in ("decision", "seconds", "timings")} | {"lock": r["lock"]["kind"]}  # noqa: E731
    kept_s = [r["seconds"] for r in kept]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "tracking": redact(server) if server else "sqlite (a throw-away folder)",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # shared machine: read the figures with this
        "test_images": test.n,
        "gate_decision_s_median": round(statistics.median(kept_s), 3),
        "gate_decision_s_min": round(min(kept_s), 3),
        "gate_decision_s_max": round(max(kept_s), 3),
        "first_champion": pick(first),
        "kept": [pick(r) for r in kept],
        "promoted": pick(promoted),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gate_timing{'-' + args.label if args.label else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.label:
        readme = ROOT / "README.md"
        k = {key: statistics.median(r["timings"][key] for r in kept) for key in kept[0]["timings"]}
        table = (
            f"Gate timing (`uv run python bench/gate_timing.py`, {result['machine']}, SQLite registry, "
            f"{test.n} test images): one decision takes **{result['gate_decision_s_median']:.2f} s** "
            f"(median of {args.repeat}; min {result['gate_decision_s_min']:.2f}, max "
            f"{result['gate_decision_s_max']:.2f}); scoring the challenger {k['challenger_scoring_s']:.2f} s and "
            f"the champion {k['champion_scoring_s']:.2f} s of it (medians; load from the registry + predict), "
            f"1-min load average {result['load_average_1m_at_end']} on the shared machine. "
            f"Results: `bench/results/gate_timing.json`.\n"
        )
        text = re.sub(r"<!-- gate-bench:start -->.*<!-- gate-bench:end -->",
                      f"<!-- gate-bench:start -->\n{table}<!-- gate-bench:end -->", readme.read_text(), flags=re.S)
        readme.write_text(text)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
