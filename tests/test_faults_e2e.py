"""Faults of a whole run, for real: `transferline run` SIGKILLed during pretrain,
finetune and register, the MLflow database deleted, the tracking server
stopped mid-run; each time the next run must finish the job, and nothing the
killed run started may outlive it.

One tiny project is shared and the tests run in file order (each starts from
the state the one before left, which its first asserts check): every run costs
seconds of start-up, so no test pays for a project of its own. After the first
kill (which checks that Prefect's ephemeral API dies with the run) the runs use
the project's local Prefect server (`transferline server start`), as a team
running this every night would.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import MLFLOW_ENV, make_project, tiny_raw_params
from kit.prefectserver import stop_group as stop
from kit.prefectserver import free_port

pytestmark = pytest.mark.slow

NAME = "transferline-image"
# epochs enough that a poll at 50 ms sees a checkpoint before training ends; retries short
# so the server-down run fails in seconds (orchestrate.* is no stage's param: DVC ignores it)
RAW = tiny_raw_params(pretrain={"epochs": 4}, finetune={"epochs": 5},
                      orchestrate={"retries": 1, "retry_delay_seconds": 1})
FAULTS: list[dict] = []  # one row per case, printed at the end (pytest -s) for the README
SHOWN: list[str] = []  # `transferline status` before and after the database went


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("faults") / "proj", RAW)
    yield project
    cli(project, "server", "stop")
    for row in FAULTS:
        print(f"\nFAULT | {row['case']} | exit {row['rc']} | {row['seconds']:.1f} s | {row['message']} | "
              f"{row['state']}", end="")
    for text in SHOWN:
        print("\n" + text, end="")


def start(project: Path, *args: str) -> subprocess.Popen:
    """`transferline ARGS` (default: run --no-push) as a shell job: a process group of its own.
    Its output goes to numbered files beside the project (`output`)."""
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV and not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(project / ".transferline/prefect")
    logs = project.parent / "logs"
    logs.mkdir(exist_ok=True)
    n = len(list(logs.glob("*.err")))
    with (logs / f"{n:02}.out").open("w") as out, (logs / f"{n:02}.err").open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "transferline.cli", *(args or ("run", "--no-push"))],
                                cwd=project, env=env, stdout=out, stderr=err, start_new_session=True,
                                preexec_fn=_terminal_sigint)


def _terminal_sigint() -> None:
    """SIGINT at its default, as in a terminal: a shell that starts the test run in the background
    (CI, nohup ... &) ignores it, the children inherit that, and Ctrl-C would do nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def output(project: Path, stream: str = "err") -> str:
    """What the latest command printed on stderr (or stdout)."""
    return sorted((project.parent / "logs").glob(f"*.{stream}"))[-1].read_text()


def finish(project: Path, proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    """Wait for `proc`; (exit code, its stderr)."""
    proc.wait(timeout=timeout)
    return proc.returncode, output(project)


def cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    proc = start(project, *args)
    rc, err = finish(project, proc)
    return subprocess.CompletedProcess(proc.args, rc, output(project, "out"), err)


def wait_until(what: str, ok, proc: subprocess.Popen, timeout: float = 240) -> float:
    """Poll `ok()` every 50 ms while the run lives; the seconds it took."""
    t0 = time.perf_counter()
    while not ok():
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before {what}"
        assert time.perf_counter() - t0 < timeout, f"no {what} after {timeout} s"
        time.sleep(0.05)
    return time.perf_counter() - t0


def local_server(project: Path) -> int | None:
    """The pid of the project's local Prefect server (`transferline server start`), if up."""
    state = project / ".transferline/prefect/transferline-server.json"
    return json.loads(state.read_text())["pid"] if state.is_file() else None


def left_behind(project: Path, run_pid: int) -> list[str]:
    """Live processes working in the project or carrying the run's mark (transferline/runguard.py),
    but for the local Prefect server's process group: it serves every run and outlives them."""
    found, server = [], local_server(project)
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            stat = (proc / "stat").read_text().rsplit(") ", 1)[-1].split()
            state, group = stat[0], int(stat[2])
            if server is not None and group == server:
                continue
            mine = str(Path(os.readlink(proc / "cwd"))).startswith(str(project)) or \
                f"TRANSFERLINE_RUN_PID={run_pid}\0".encode() in (proc / "environ").read_bytes() + b"\0"
            if mine and state != "Z":
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ")[:120].decode()
                found.append(f"{proc.name}: {cmd}")
        except OSError:  # gone, or not ours to read
            continue
    return found


def kill(project: Path, proc: subprocess.Popen, group: bool) -> float:
    """SIGKILL the run (its pid alone, as `kill -9 PID`, or its whole process group); the
    seconds until nothing it started is left."""
    os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
    proc.wait()
    t0 = time.perf_counter()
    while (left := left_behind(project, proc.pid)) and time.perf_counter() - t0 < 20:
        time.sleep(0.2)
    assert not left, f"orphans of the killed run: {left}"
    return time.perf_counter() - t0


def db(project: Path) -> Path:
    return project / ".transferline/mlflow.db"


def versions(project: Path) -> int:
    """Registered versions in the project's SQLite store (0 while it is missing or busy)."""
    try:
        with sqlite3.connect(f"file:{db(project)}?mode=ro", uri=True, timeout=1) as con:
            return con.execute("select count(*) from model_versions").fetchone()[0]
    except sqlite3.Error:
        return 0


def registry(store: Path, artifacts: Path | None = None) -> tuple[list[str], str | None]:
    """(every version, champion) in the SQLite store `store`; asserts each version is whole: its
    model files and the tags the gate and `status` read. MLflow's tables are read directly: a
    client in this process would keep its cached engine on a database file a test deletes.
    `artifacts`: the server's --artifacts-destination (None: the file paths are in the store)."""
    from transferline.champion import CLASSES_TAG

    with sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5) as con:
        rows = con.execute("select v.version, m.artifact_location from model_versions v left join logged_models m "
                           "on v.source = 'models:/' || m.model_id where v.name = ?", (NAME,)).fetchall()
        tags = con.execute("select version, key from model_version_tags where name = ?", (NAME,)).fetchall()
        champion = con.execute("select version from registered_model_aliases where name = ? and alias = 'champion'",
                               (NAME,)).fetchone()
    for version, location in rows:
        keys = {key for v, key in tags if v == version}
        assert {CLASSES_TAG, "modality", "test_accuracy"} <= keys, f"version {version} is half-written: {keys}"
        files = Path(location.removeprefix("file://")) if artifacts is None else \
            artifacts / location.removeprefix("mlflow-artifacts:/")
        assert (files / "MLmodel").is_file() and (files / "artifacts/model.safetensors").is_file(), location
    return sorted((str(v) for v, _ in rows), key=int), None if champion is None else str(champion[0])


def killed_runs(project: Path) -> tuple[str | None, str]:
    """(the state of the newest flow run on the project's Prefect server, None while it is down;
    the status of the newest pipeline run in MLflow): what the runguard left of a killed run."""
    with sqlite3.connect(f"file:{db(project)}?mode=ro", uri=True, timeout=5) as con:
        status = con.execute("select status from runs where name = 'pipeline' order by start_time desc").fetchone()[0]
    from transferline.localserver import running

    if (server := running(project / ".transferline/prefect")) is None:
        return None, status
    request = urllib.request.Request(f"{server.api_url}/flow_runs/filter", method="POST",
                                     data=b'{"sort": "START_TIME_DESC", "limit": 1}',
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())[0]["state"]["type"], status


def test_sigkill_in_pretrain_finetune_and_register_then_a_rerun_completes(project):
    # kill -9 of the CLI's pid alone, once pretrain saved its first epoch: the runguard ends
    # `dvc repro` and the stage (their own session) and Prefect's ephemeral API
    run = start(project)
    wait_until("a pretrain checkpoint", (project / "models/pretrain/checkpoint.safetensors").exists, run, 300)
    gone = kill(project, run, group=False)
    assert versions(project) == 0
    # the runguard ended its MLflow run (Prefect's ephemeral API went with the run: nothing to tell)
    assert killed_runs(project) == (None, "KILLED")
    FAULTS.append(dict(case="kill -9 PID during pretrain", rc=run.returncode, seconds=gone,
                       message="(killed) stage, dvc and Prefect API gone", state="checkpoint kept; registry empty"))
    started = cli(project, "server", "start")
    assert started.returncode == 0 and local_server(project), started.stderr[-2000:]

    # kill -9 of the whole process group (a terminal's job) in the pretrained candidate's finetune
    run = start(project)
    wait_until("a finetune checkpoint", (project / "models/candidates/pretrain/checkpoint.safetensors").exists,
               run, 300)
    gone = kill(project, run, group=True)
    assert "[pretrain] resuming pretrain from epoch " in output(project), output(project)[-3000:]
    assert killed_runs(project) == ("CRASHED", "KILLED")  # not "Running" for good in either UI
    FAULTS.append(dict(case="kill -9 -PGID during finetune", rc=run.returncode, seconds=gone,
                       message="(killed) every child gone", state="pretrain had resumed; registry empty"))

    # and once register created its version
    run = start(project)
    wait_until("a registered version", lambda: versions(project) == 1, run, 300)
    gone = kill(project, run, group=True)
    err = output(project)
    assert "[finetune] resuming finetune (pretrain) from epoch " in err, err[-3000:]
    assert "Running stage 'pretrain'" not in err  # it finished before the second kill: DVC keeps it
    assert registry(db(project)) == (["1"], None)  # the version is whole; nothing became champion
    assert killed_runs(project) == ("CRASHED", "KILLED")
    FAULTS.append(dict(case="kill -9 -PGID during register", rc=run.returncode, seconds=gone,
                       message="(killed) every child gone", state="finetune had resumed; version 1 whole, no champion"))

    t0 = time.perf_counter()
    rc, err = finish(project, start(project))
    assert rc == 0, err[-4000:]
    ran = " ".join(err.split()).split("ran: ")[-1].split(" skipped:")[0]
    # nothing retrained. The kill lands within 50 ms of the version's creation: register reruns
    # (a second version) when DVC had not yet recorded it; DVC checks register's outputs (version
    # 1's register.json) out of its run cache when it had saved the finished run but not yet
    # dvc.lock; else only promote runs
    assert ran in ("register, promote", "promote"), ran
    from_run_cache = "Stage 'register' is cached - skipping run" in err
    assert from_run_cache == ("restored (DVC run cache)" in err)  # the run's table says so
    expected = ["1", "2"] if ran.startswith("register") and not from_run_cache else ["1"]
    assert registry(db(project)) == (expected, expected[-1])
    FAULTS.append(dict(case="rerun after the three kills", rc=rc, seconds=time.perf_counter() - t0,
                       message=f"done (ran: {ran})", state=f"version {expected[-1]} champion; every version whole"))


def test_status_names_the_version_a_lost_database_lacks_and_a_run_registers_it(project):
    version = json.loads((project / "reports/register.json").read_text())["version"]  # 1 or 2: see above
    before = cli(project, "status")
    assert before.returncode == 0, before.stderr[-3000:]
    assert f"champion: transferline-image version {version}" in before.stdout and "out of step" not in before.stdout
    db(project).unlink()  # the tracking database is lost; DVC's outputs and dvc.lock are not
    after = cli(project, "status")
    assert after.returncode == 0, after.stderr[-3000:]
    text = " ".join(after.stdout.split())
    assert "champion: none yet" in text
    assert (f"registry out of step with DVC: reports/register.json says transferline-image version {version}, which "
            "the registry (sqlite:///.transferline/mlflow.db) lacks; the next `transferline run` registers it again") in text
    SHOWN.extend([f"$ transferline status   # before rm .transferline/mlflow.db\n{before.stdout.strip()}",
                  f"$ transferline status   # after\n{after.stdout.strip()}"])

    t0 = time.perf_counter()
    rerun = cli(project, "run", "--no-push")
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert f"re-registering: reports/register.json says transferline-image version {version}" in rerun.stderr
    ran = " ".join(rerun.stderr.split()).split("ran: ")[-1].split(" skipped:")[0]
    assert ran == "register, promote", ran  # nothing retrained: the weights come from DVC
    assert registry(db(project)) == (["1"], "1")
    FAULTS.append(dict(case="rm .transferline/mlflow.db, then run", rc=rerun.returncode,
                       seconds=time.perf_counter() - t0, message=f"re-registering: ... lacks version {version}",
                       state="version 1 re-registered from DVC; champion 1"))
    again = cli(project, "status")
    assert "champion: transferline-image version 1" in again.stdout and "out of step" not in again.stdout
    SHOWN.append(f"$ transferline status   # after the run\n{again.stdout.strip()}")


def serve(where: Path, port: int) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:port (SQLite and artifacts in `where`), once it answers."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{where}/mlflow.db",
         "--artifacts-destination", str(where / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], cwd=where, env=env, stdout=(where / "server.log").open("a"), stderr=subprocess.STDOUT,
        start_new_session=True)
    t0 = time.perf_counter()
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except OSError:
            assert server.poll() is None and time.perf_counter() - t0 < 120, (where / "server.log").read_text()[-3000:]
            time.sleep(0.5)


def test_tracking_server_gone_mid_run_fails_clearly_and_a_rerun_completes(project, tmp_path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = serve(tmp_path, port)
    try:
        run = start(project, "run", "--no-push", "--set", f"tracking.uri={uri}")
        wait_until("the register stage", lambda: "Running stage 'register'" in output(project), run)
        stop(server)  # the server goes away as the stage starts talking to it
        t0 = time.perf_counter()
        rc, err = finish(project, run)
        seconds = time.perf_counter() - t0
        last = err.strip().splitlines()[-1]
        assert rc == 1, err[-4000:]
        assert "Traceback" not in err, err[-4000:]
        assert last.startswith("error: ") and uri in last, err[-3000:]
        assert err.count(f"[register] transient error: the tracking server {uri} is unreachable") >= 1
        assert seconds < 60, seconds  # HTTP retries cut short, then one orchestrator retry
        assert registry(tmp_path / "mlflow.db", tmp_path / "artifacts") == ([], None)  # nothing half-written
        assert registry(db(project)) == (["1"], "1")  # the local store the project left: untouched
        FAULTS.append(dict(case="mlflow server stopped during register", rc=rc, seconds=seconds, message=last,
                           state="server registry empty (no half version); local registry untouched"))

        server = serve(tmp_path, port)  # the same database: what the run wrote before is there
        t0 = time.perf_counter()
        rc, err = finish(project, start(project))
        assert rc == 0, err[-4000:]
        assert registry(tmp_path / "mlflow.db", tmp_path / "artifacts") == (["1"], "1")
        FAULTS.append(dict(case="server back, rerun", rc=rc, seconds=time.perf_counter() - t0, message="done",
                           state="version 1 on the server, champion"))
    finally:
        stop(server)


def test_ctrl_c_ends_the_run_its_processes_and_its_mlflow_runs(tmp_path_factory):
    """Ctrl-C in a terminal (SIGINT to the foreground process group) during pretrain: the run exits
    130 at once, DVC and the stage (their own session) go with it, and the MLflow run and the
    stage's nested run end KILLED; the stage's stayed RUNNING before (flows/pipeline.py caught
    Exception only)."""
    project = make_project(tmp_path_factory.mktemp("ctrl-c") / "proj", RAW)
    started = cli(project, "server", "start")  # the default setup (params.yaml orchestrate.local_server)
    assert started.returncode == 0 and local_server(project), started.stderr[-2000:]
    try:
        run = start(project)
        wait_until("pretrain to start", lambda: "Running stage 'pretrain'" in output(project), run, 300)
        os.killpg(run.pid, signal.SIGINT)
        t0 = time.perf_counter()
        rc, err = finish(project, run, timeout=60)
        assert rc == 130 and time.perf_counter() - t0 < 15, err[-3000:]
        assert "interrupted (Ctrl-C): finished stages are kept" in err and "error:" not in err, err[-3000:]
        while (left := left_behind(project, run.pid)) and time.perf_counter() - t0 < 30:
            time.sleep(0.2)
        assert not left, f"orphans of the interrupted run: {left}"
        gone = time.perf_counter() - t0
        assert killed_runs(project)[0] == "CRASHED"  # Prefect's own word for an interrupted flow run
    finally:
        cli(project, "server", "stop")
    with sqlite3.connect(f"file:{db(project)}?mode=ro", uri=True, timeout=5) as con:
        runs = dict(con.execute("select name, status from runs").fetchall())
    assert runs == {"pipeline": "KILLED", "pretrain": "KILLED", **{s: "FINISHED" for s in
                    ("ingest", "validate", "split", "preprocess")}}, runs
    FAULTS.append(dict(case="Ctrl-C during pretrain", rc=rc, seconds=gone, message="interrupted (Ctrl-C): ...",
                       state="every child gone; flow run Crashed; MLflow run and pretrain's run KILLED"))
