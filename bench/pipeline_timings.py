"""Benchmark: wall time of a full default run and of a no-op rerun.

Runs the real CLI twice in a throw-away copy of the project (default
params.yaml, fresh DVC cache, MLflow DB and Prefect home; the downloaded
artifacts are shared), then writes bench/results/pipeline_timings.json and
the table in README.md between the bench markers. The no-op rerun is also
given as a ratio of the full run: these machines are noisy, ratios less so.

    uv run python bench/pipeline_timings.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test kit is not installed
from kit.scaffold import ROOT, make_project  # noqa: E402

RESULTS = ROOT / "bench/results/pipeline_timings.json"


def timed_run(project: Path) -> tuple[float, dict]:
    env = {**os.environ, "PREFECT_HOME": str(project / ".transferline/prefect"),
           "TRANSFERLINE_DOWNLOADS": str(ROOT / ".transferline/downloads")}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "transferline.cli", "run", "--no-push"], cwd=project, env=env,
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"run failed:\n{done.stderr[-3000:]}")
    stages = dict(re.findall(r"│ (\w+)\s+│ (?:ran|skipped)[^│]*│\s+([\d.]+)\s+│", done.stderr))
    return seconds, {k: float(v) for k, v in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the throw-away project")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="transferline-bench-"))
    project = make_project(work / "project", yaml.safe_load((ROOT / "params.yaml").read_text()))
    full, full_stages = timed_run(project)
    noop, noop_stages = timed_run(project)
    metrics = json.loads((project / "reports/metrics.json").read_text())
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
        "full_run_s": round(full, 1),
        "noop_rerun_s": round(noop, 1),
        "noop_over_full": round(noop / full, 3),
        "full_stage_s": full_stages,
        "noop_stage_s": noop_stages,
        "finetune_test_accuracy": metrics["finetune"]["accuracy"],
        "scratch_test_accuracy": metrics["scratch"]["accuracy"],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    rows = "\n".join(f"| {s} | {full_stages.get(s, 0):.1f} | {noop_stages.get(s, 0):.1f} |" for s in full_stages)
    table = (
        f"Machine: {result['machine']}.\n\n"
        "| stage | full run (s) | no-op rerun (s) |\n|---|---|---|\n" + rows +
        f"\n| **whole command** | **{full:.1f}** | **{noop:.1f}** (ratio {noop / full:.3f}) |\n"
    )
    readme = ROOT / "README.md"
    text = readme.read_text()
    text = re.sub(r"<!-- bench:start -->.*<!-- bench:end -->",
                  f"<!-- bench:start -->\n{table}<!-- bench:end -->", text, flags=re.S)
    readme.write_text(text)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
