"""Benchmark: wall time of one promotion-gate decision.

Builds a small real registry in a throw-away folder (a SmallCNN fitted on
real Animal-MNIST images and weaker copies of it, tests/kit/challengers.py),
registers them through the real register stage, then times the gate
(transferline.promotion.run_gate) on the 300-image test split: one
first-champion decision, then REPEAT nightly decisions (a new, worse
challenger against the same champion), alternately with the champion's
predictions kept from an earlier gate (transferline.gatecache: the champion is
not loaded or run) and with the gate's cache emptied first (both models loaded
from the registry as pyfunc models and scored, as every gate did before the
cache), and one promotion. Writes bench/results/gate_timing[-LABEL].json.

    uv run python bench/gate_timing.py                       # SQLite registry (the default store)
    source DIR/env && uv run python bench/gate_timing.py --label postgres   # after scripts/mlflow-postgres.sh start DIR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
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
    parser.add_argument("--repeat", type=int, default=5, help="nightly decisions of each kind (champion kept, both scored)")
    parser.add_argument("--label", default="", help="suffix of the results file (e.g. postgres)")
    args = parser.parse_args()

    from transferline.image.data import load_animal_mnist
    from kit.challengers import graded, make_gate_project, register_weights
    from transferline.config import parse_params
    from transferline.gatecache import FOLDER
    from transferline.promotion import redact, run_gate

    # read before anything runs: mlflow.set_tracking_uri() writes this variable itself
    server = os.environ.get("MLFLOW_TRACKING_URI")
    work = Path(tempfile.mkdtemp(prefix="transferline-gate-bench-"))
    x, y = load_animal_mnist()
    model, test = make_gate_project(work, x, y)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["tracking"] = {"uri": f"sqlite:///{work / 'mlflow.db'}", "artifact_root": str(work / "mlartifacts"),
                       "experiment": "gate-bench"}
    raw["register"]["image"]["model_name"] = "gate-bench"
    raw["promote"]["metrics"] = {"accuracy": {"min": 0.3, "margin_abs": 0.01}, "macro_f1": {"min": 0.0}}
    params = parse_params(raw)
    medium = register_weights(params, graded(model, 3), work)["version"]
    best = register_weights(params, model, work)["version"]

    os.chdir(work)  # the gate keeps predictions under the project (.transferline/gatecache)
    first = run_gate(params, test, medium)
    kept, scored = [], []
    for i in range(2 * args.repeat):  # alternated: the machine's drift falls on both
        if i % 2:
            shutil.rmtree(work / FOLDER, ignore_errors=True)
        worse = register_weights(params, graded(model, 6), work)["version"]
        (scored if i % 2 else kept).append(run_gate(params, test, worse))
    promoted = run_gate(params, test, best)
    assert first["decision"] == "first_champion" and promoted["decision"] == "promoted", (first, promoted)
    assert all(r["decision"] == "kept" for r in kept + scored)
    assert all(r["predictions_kept_from"]["champion"] for r in kept)
    assert not any(r["predictions_kept_from"]["champion"] for r in scored)
    pick = lambda r: {k: r[k] for k in ("decision", "seconds", "timings")} | {"lock": r["lock"]["kind"]}  # noqa: E731
    kept_s, scored_s = [r["seconds"] for r in kept], [r["seconds"] for r in scored]
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "tracking": redact(server) if server else "sqlite (a throw-away folder)",
        "load_average_1m_at_end": round(os.getloadavg()[0], 2),  # shared machine: read the figures with this
        "test_images": test.n,
        "gate_decision_s_median": round(statistics.median(kept_s), 3),  # the nightly case: champion kept
        "gate_decision_s_min": round(min(kept_s), 3),
        "gate_decision_s_max": round(max(kept_s), 3),
        "gate_decision_scored_s_median": round(statistics.median(scored_s), 3),  # both loaded and scored
        "first_champion": pick(first),
        "kept": [pick(r) for r in kept],
        "scored": [pick(r) for r in scored],
        "promoted": pick(promoted),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"gate_timing{'-' + args.label if args.label else ''}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    if not args.label:
        readme = ROOT / "README.md"
        k = {key: statistics.median(r["timings"][key] for r in scored) for key in scored[0]["timings"]}
        champion_kept_s = statistics.median(r["timings"]["champion_scoring_s"] for r in kept)
        table = (
            f"Gate timing (`uv run python bench/gate_timing.py`, {result['machine']}, SQLite registry, "
            f"{test.n} test images, {args.repeat} nightly decisions of each kind, alternated): one decision takes "
            f"**{result['gate_decision_s_median']:.2f} s** with the champion's predictions kept from an earlier "
            f"gate (median; min {result['gate_decision_s_min']:.2f}, max {result['gate_decision_s_max']:.2f}) vs "
            f"**{result['gate_decision_scored_s_median']:.2f} s** scoring both (ratio "
            f"{result['gate_decision_s_median'] / result['gate_decision_scored_s_median']:.2f}): the champion "
            f"{champion_kept_s:.2f} s kept vs {k['champion_scoring_s']:.2f} s scored (load from the registry + "
            f"predict), the challenger {k['challenger_scoring_s']:.2f} s; 1-min load average "
            f"{result['load_average_1m_at_end']} at the end. Results: `bench/results/gate_timing.json`.\n"
        )
        text = re.sub(r"<!-- gate-bench:start -->.*<!-- gate-bench:end -->",
                      f"<!-- gate-bench:start -->\n{table}<!-- gate-bench:end -->", readme.read_text(), flags=re.S)
        readme.write_text(text)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
