"""Where a full run's time and CPU go, process by process: one `transferline run`, traced.

bench/overhead.py says how much the orchestration costs; this says where, and whether both
cores were busy then: where they are, overlapping work only moves it, and only less work
shortens the run. In a throw-away copy of the project (the "small" size unless --default;
the downloaded artifacts shared), with the project's Prefect server up and dvc.lock and the
run cache removed (every stage runs, as in the overhead bench), it runs `transferline run
--no-push` once and reads every process's CPU time from /proc (Linux) every --interval
seconds: the CLI (Prefect, the flow's MLflow records), the run's DVC process (DVC, its plan,
its warm-up imports), the stages (forked from it or in new interpreters: their CPU counted
when DVC reaps them, so none is missed between two readings), the Prefect server, the run
guard. Beside it the second each stage was asked for and said it was done.

Writes bench/results/run_trace.json (run_trace_default.json with --default) and prints the
timeline, the CPU by process, and the CPU the other processes used while a stage did its own
work (which that work competes with, and a run-over-own-work figure cannot see).

    uv run python bench/run_trace.py [--default] [--interval 0.25] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from overhead import TL, bench_params, env_for, rerun_all, timed

from kit.scaffold import ROOT, make_project
from transferline.dvcrun import WORK_DONE
from transferline.warmstart import REGISTRY_NAME

RESULTS = ROOT / "bench/results"  # run_trace.json (small), run_trace_default.json
TICK = os.sysconf("SC_CLK_TCK")
ASKED = re.compile(r"Running stage '(\w+)'")  # DVC's line as it starts a stage's command


def proc_times(pid: int) -> tuple[int, float, float] | None:
    """(ppid, own CPU s, reaped children's CPU s) of a live process, or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = stat[stat.rfind(")") + 2:].split()  # after the command name, which may hold spaces
    return int(f[1]), (int(f[11]) + int(f[12])) / TICK, (int(f[13]) + int(f[14])) / TICK


def kind(pid: int, ppid: int, cli: int) -> str:
    """Which part of the run a process is (a forked stage keeps the DVC process's command line; so
    does the process that forks register and promote, transferline.warmstart, named REGISTRY_NAME,
    the name its stages inherit): the DVC process and that one are "dvc"."""
    if pid == cli:
        return "cli"
    if pid == os.getpid():
        return "this trace"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        names = [Path(f"/proc/{p}/comm").read_text().strip() for p in (pid, ppid)]
    except OSError:  # gone (or its parent is)
        return "other"
    if "transferline.dvcrun" in cmd:
        registry = names[0] == REGISTRY_NAME and names[1] != REGISTRY_NAME
        return "dvc" if ppid == cli or registry else "stages"
    if "-m tasks." in cmd:
        return "stages"
    if "prefect" in cmd and "server" in cmd:
        return "prefect server"
    return "run guard" if "transferline.runguard" in cmd else "other"


def trace(project: Path, interval: float) -> dict:
    """Run the pipeline once under the sampler; the timeline, the stages and the CPU by part."""
    t0 = time.perf_counter()
    cli = subprocess.Popen([*TL, "run", "--no-push"], cwd=project, env=env_for(project), text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
    seen: dict[int, tuple[str, float]] = {}  # pid -> (part, own CPU at the last reading)
    start: dict[int, float] = {}  # pid -> own CPU before the run (0 for a process the run started)
    reaped_at: list[tuple[float, float]] = []  # (second, the stage processes reaped so far: by the DVC process and the registry process)
    timeline: list[tuple[float, float, dict[str, float]]] = []
    stop = threading.Event()

    def read_all(first: bool = False) -> tuple[dict[str, float], float]:
        """CPU s each part used since the last reading (`first`: the reading before the run), and
        the CPU s of the stage processes reaped so far (by the "dvc" processes)."""
        used: Counter[str] = Counter()
        reaped_now = 0.0
        for name in os.listdir("/proc"):
            if not name.isdigit() or (times := proc_times(int(name))) is None:
                continue
            pid, (ppid, own, children) = int(name), times
            if pid not in seen:  # what a process running before the run had used is not the run's
                start[pid] = own if first and pid != cli.pid else 0.0
                seen[pid] = (kind(pid, ppid, cli.pid), start[pid])
            part, before = seen[pid]
            used[part] += own - before
            seen[pid] = (part, own)
            if part == "dvc":  # the DVC process, and the registry process (register's and promote's)
                reaped_now += children
        return dict(used), max(reaped_now, reaped_at[-1][1] if reaped_at else 0.0)

    def sample() -> None:
        read_all(first=True)
        while not stop.wait(interval):  # each row: when, the seconds since the last one, CPU s by part
            last = timeline[-1][0] if timeline else 0.0
            now = time.perf_counter() - t0
            used, reaped = read_all()
            timeline.append((round(now, 2), round(now - last, 3), {k: round(v, 2) for k, v in used.items() if v}))
            reaped_at.append((now, reaped))

    sampler = threading.Thread(target=sample)
    sampler.start()
    stages: dict[str, dict] = {}
    assert cli.stdout is not None
    for line in cli.stdout:
        now = round(time.perf_counter() - t0, 2)
        if asked := ASKED.search(line):
            stages[asked[1]] = {"asked_s": now}
        elif (done := WORK_DONE.search(line.strip())) and done[1] in stages:
            stages[done[1]].update(done_s=now, work_s=float(done[2]))
    code = cli.wait()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"transferline run failed (exit {code}) in {project}")
    cpu: Counter[str] = Counter()
    for pid, (part, own) in seen.items():
        cpu[part] += own - start[pid]
    cpu["stages"] = reaped_at[-1][1] if reaped_at else 0.0  # exact: every stage process, reaped by a "dvc" one

    def reaped_by(second: float) -> float:
        return max((value for t, value in reaped_at if t <= second), default=0.0)

    asked = sorted((s["asked_s"], name) for name, s in stages.items())
    for (at, name), (until, _) in zip(asked, [*asked[1:], (wall + 1, "")]):  # reaped before the next is asked for
        stages[name]["cpu_s"] = round(reaped_by(until) - reaped_by(at), 2)
    first = min((s["asked_s"] for s in stages.values()), default=wall)
    return {"wall_s": round(wall, 2), "first_stage_asked_s": first, "stages": stages,
            "cpu_s": {k: round(v, 2) for k, v in cpu.most_common()},
            "cpu_beside_stage_work_s": beside_work(timeline, stages),
            "busy_cores_before_first_stage": busy(timeline, 0, first),
            "busy_cores_from_first_stage": busy(timeline, first, wall), "interval_s": interval, "timeline": timeline}


def beside_work(timeline: list[tuple[float, float, dict[str, float]]], stages: dict) -> dict[str, float]:
    """CPU s each part but the stages used while a stage did its own work (from its fork, about when
    DVC asked for it, to its "done" line): CPU the stage's own work competes with, and so hides in
    it, unseen by a run-over-own-work figure. The tracer's own excluded."""
    spans = [(s["asked_s"], s["done_s"]) for s in stages.values() if "done_s" in s]
    used: Counter[str] = Counter()
    for t, _, parts in timeline:
        if any(a < t <= d for a, d in spans):
            used.update({k: v for k, v in parts.items() if k not in ("stages", "this trace")})
    return {k: round(v, 2) for k, v in used.most_common()}


def busy(timeline: list[tuple[float, float, dict[str, float]]], since: float, until: float) -> float:
    """Cores busy on average between two seconds of the run (every process counted)."""
    rows = [(dt, sum(used.values())) for t, dt, used in timeline if since < t <= until]
    return round(sum(cpu for _, cpu in rows) / sum(dt for dt, _ in rows), 2) if rows else 0.0


def show(result: dict) -> str:
    lines = [f"{'s':>7} {'cores':>5}  CPU s by part in the interval (the stages' lines between)"]
    stages = result["stages"].items()
    rows = [(s["asked_s"], 0, f"       | asked for {name}") for name, s in stages]
    rows += [(s["done_s"], 0, f"       | {name} done ({s['work_s']} s of work)") for name, s in stages if "done_s" in s]
    rows += [(t, 1, f"{sum(used.values()) / dt:5.2f}  " + "  ".join(f"{k} {v:.2f}" for k, v in
                                                              sorted(used.items(), key=lambda kv: -kv[1])))
             for t, dt, used in result["timeline"]]
    lines += [f"{t:7.2f} {text}" for t, _, text in sorted(rows)]  # a stage's line before the reading at its second
    lines += ["", "stage: asked for at, work s, CPU s of its process (forked or not; reaped by DVC)"]
    lines += [f"  {name}: {s['asked_s']} s, {s.get('work_s')} s, {s.get('cpu_s')} s" for name, s in result["stages"].items()]
    lines += ["", f"wall {result['wall_s']} s; the first stage asked for at {result['first_stage_asked_s']} s; "
              f"cores busy before it {result['busy_cores_before_first_stage']}, "
              f"after it {result['busy_cores_from_first_stage']}",
              "CPU s by part: " + ", ".join(f"{k} {v}" for k, v in result["cpu_s"].items())]
    if "cpu_beside_stage_work_s" in result:
        lines.append("CPU s beside the stages' own work (hidden in it): "
                     + ", ".join(f"{k} {v}" for k, v in result["cpu_beside_stage_work_s"].items()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--default", action="store_true", help="the default params.yaml (about 2.5 minutes "
                        "a run here) instead of the small size (under a minute)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between two readings of /proc")
    parser.add_argument("--workdir", type=Path, default=None, help="where to build the throw-away project")
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="transferline-trace-"))
    project = make_project(work / "project", bench_params(small=not args.default))
    try:
        timed([*TL, "server", "start"], project)
        # not the project's first run (the MLflow store, the experiment): a short one first, as the overhead bench
        timed([*TL, "run", "--no-push", "--until", "validate"], project)
        rerun_all(project)
        result = {"size": "the default params.yaml" if args.default else "small (bench/overhead.py --small)",
                  "command": "uv run python bench/run_trace.py" + " --default" * args.default, **trace(project, args.interval)}
    finally:
        timed([*TL, "server", "stop"], project, check=False)
    (RESULTS / f"run_trace{'_default' * args.default}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(show(result))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
