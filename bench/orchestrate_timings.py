"""Benchmark: a fresh clone restored from the DVC remote, and the time of a
"nothing to do" check (from the CLI and as a scheduled deployment run on a
real Prefect server with a process worker).

Builds a throw-away copy of the project with the default params.yaml, runs
the pipeline once (which pushes to the project's DVC remote) and commits it;
or, with --remote, uses this repository's committed dvc.lock and the given
remote. Then clones it, points the clone at the remote, `dvc pull`s, and times:
`transferline run` (every stage must be skipped), `transferline check`
(must say nothing to do), and a run of the `transferline-check` deployment
on a fresh `prefect server` (trigger -> COMPLETED, and the flow run's own
duration from the API). Writes bench/results/orchestrate_timings.json.

    uv run python bench/orchestrate_timings.py [--workdir DIR] [--remote PATH_OF_THE_DVC_REMOTE]
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

import yaml

from transferline.dvcrun import STAGES
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test kit is not installed
from kit.prefectserver import prefect_cli, prefect_server, process_worker, trigger, wait_for_run  # noqa: E402
from kit.scaffold import ROOT, make_project  # noqa: E402

RESULTS = ROOT / "bench/results/orchestrate_timings.json"
README = ROOT / "README.md"
MARKERS = ("<!-- orchestrate-bench:start -->", "<!-- orchestrate-bench:end -->")


def readme_table(result: dict) -> str:
    clone, cli, dep = result["fresh_clone"], result["check_nothing_to_do_cli"], result["check_nothing_to_do_deployment"]
    best_dep = min(dep["runs"][1:] or dep["runs"], key=lambda r: r["trigger_to_completed_s"])
    lines = [
        f"Machine: {result['machine']}; {result['origin']}.",
        "",
        "| what | wall time (s) |",
        "|---|---|",
    ]
    if result.get("origin_full_run_s"):
        lines.append(f"| full run that filled the remote | {result['origin_full_run_s']:.1f} |")
    lines += [
        f"| fresh clone: `dvc pull` | {clone['dvc_pull_s']:.1f} |",
        f"| fresh clone: `transferline run` ({'every stage skipped' if clone['every_stage_skipped'] else 'ran: ' + clone['ran']}) "
        f"| {clone['run_s']:.1f} |",
        f"| `transferline check`, nothing to do (CLI, Prefect ephemeral API; median of {len(cli)}) "
        f"| {sorted(c['wall_s'] for c in cli)[len(cli) // 2]:.1f} |",
        f"| of which the check flow itself | {sorted(c['flow_s'] for c in cli)[len(cli) // 2]:.2f} |",
        f"| scheduled check on a Prefect server, nothing to do: trigger to COMPLETED (worker warm) "
        f"| {best_dep['trigger_to_completed_s']:.1f} |",
        f"| of which the flow run (server's `total_run_time`) | {best_dep['flow_run_s']:.2f} |",
    ]
    return "\n".join(lines)


def write_readme(result: dict) -> None:
    text = README.read_text()
    start, end = text.index(MARKERS[0]) + len(MARKERS[0]), text.index(MARKERS[1])
    README.write_text(text[:start] + "\n" + readme_table(result) + "\n" + text[end:])


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return round(seconds, 2), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--remote", help="clone this repository and pull from this remote (it must hold the "
                        "data of the committed dvc.lock) instead of building and running a copy")
    parser.add_argument("--workdir", type=Path, default=None, help="where to clone")
    parser.add_argument("--origin", type=Path, help="clone this project instead (already run, committed, "
                        "its DVC remote at ORIGIN/.remote)")
    parser.add_argument("--readme-only", action="store_true", help="only rewrite README's table from the results file")
    args = parser.parse_args()
    if args.readme_only:
        write_readme(json.loads(RESULTS.read_text()))
        return
    work = Path(args.workdir or tempfile.mkdtemp(prefix="transferline-orch-"))
    clone = work / "clone"
    dvc = [sys.executable, "-m", "dvc"]
    tl = [sys.executable, "-m", "transferline.cli"]
    source_run = None
    if args.remote:
        origin, remote = ROOT, Path(args.remote).resolve()
    elif args.origin:
        origin = args.origin.resolve()
        remote = origin / ".remote"
    else:
        origin = make_project(work / "origin", yaml.safe_load((ROOT / "params.yaml").read_text()))
        remote = origin / ".remote"
        (origin / ".git/info/exclude").write_text(".remote/\n")
        source_run, _ = timed([*tl, "run"], origin, {"PREFECT_HOME": str(origin / ".transferline/prefect")})
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
        subprocess.run([*git, "add", "-A"], cwd=origin, check=True)
        subprocess.run([*git, "commit", "-qm", "a full run"], cwd=origin, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=origin, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    subprocess.run([*dvc, "remote", "modify", "--local", "local", "url", str(remote)], cwd=clone, check=True)
    env = {"PREFECT_HOME": str(clone / ".transferline/prefect")}
    env = {k: v for k, v in {**os.environ, **env}.items() if k != "PREFECT_API_URL"}

    pull_s, _ = timed([*dvc, "pull", "--quiet"], clone)
    run_s, run = timed([*tl, "run"], clone, env)
    text = " ".join(run.stderr.split())
    ran = text.split("ran: ")[-1].split(" skipped:")[0]
    skipped = text.split("skipped: ")[-1].split(" test accuracy")[0].split(" done in")[0]
    checks = []
    for _ in range(3):
        seconds, done = timed([*tl, "check"], clone, env)
        inner = re.search(r"checked in ([\d.]+) s", " ".join(done.stderr.split()))
        assert "nothing to do" in done.stderr, done.stderr[-2000:]
        checks.append({"wall_s": seconds, "flow_s": float(inner.group(1)) if inner else None})

    # the same check as a scheduled deployment on a real server
    home = work / "prefect-server"
    t0 = time.perf_counter()
    with prefect_server(home) as api:
        server_s = round(time.perf_counter() - t0, 1)
        prefect_cli(home, api, "work-pool", "create", "transferline", "--type", "process")
        timed([*tl, "deploy", "--name", "bench"], clone, {**env, "PREFECT_API_URL": api})
        with process_worker(home, api, "transferline"):
            deployed = []
            for _ in range(2):  # the first includes the worker's start
                t0 = time.perf_counter()
                run_id = trigger(home, api, "transferline-check/bench")
                state = wait_for_run(api, run_id, timeout=600)
                wall = round(time.perf_counter() - t0, 2)
                assert state["state"]["type"] == "COMPLETED", (home / "worker.log").read_text()[-3000:]
                deployed.append({"trigger_to_completed_s": wall, "flow_run_s": round(state["total_run_time"], 2)})

    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "origin": ("this repository (--remote)" if args.remote else f"an existing project (--origin), params: "
                   f"{yaml.safe_load((origin / 'params.yaml').read_text())['split']}" if args.origin
                   else "a copy with the default params.yaml"),
        "commit": commit,
        "origin_full_run_s": source_run,
        "fresh_clone": {"dvc_pull_s": pull_s, "run_s": run_s, "ran": ran, "skipped": skipped,
                        "every_stage_skipped": ran.startswith("nothing") and skipped == ", ".join(STAGES)},
        "check_nothing_to_do_cli": checks,
        "check_nothing_to_do_deployment": {"server_start_s": server_s, "runs": deployed},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    write_readme(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
