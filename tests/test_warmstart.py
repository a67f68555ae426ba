"""Stage commands forked from the flow's warm DVC process (transferline.warmstart), on a real
DVC project whose stages are `python -m tasks.<name>` modules, as dvc.yaml writes them."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from transferline.dvcrun import DvcProcess, StageFailed, StageRefused
from transferline.warmstart import REGISTRY_NAME

# What a stage's process had loaded before its own code ran, who started it, what it was told.
PROBE = """
import gc, json, os, stat, sys
seen = {"torch_before": "torch" in sys.modules, "mlflow_before": "mlflow" in sys.modules, "gc_on": gc.isenabled(),
        "project_before": sorted(m for m in sys.modules if m.split(".")[0] in ("transferline", "tasks.helper")),
        "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd(), "run": os.environ.get("STAGE_RUN"),
        "stdin_is_a_pipe": stat.S_ISFIFO(os.fstat(0).st_mode)}
from tasks.helper import VALUE
seen["value"] = VALUE
with open(__spec__.name.split(".")[-1] + ".json", "w") as f:  # probe.json, register.json
    json.dump(seen, f)
print("probe says", VALUE, flush=True)
if VALUE == "sleep":
    import time
    time.sleep(60)
if VALUE == "fail":
    raise ValueError("told to fail")
"""
REFUSE = 'import sys\nprint("[refuse] error: row 3 has no label; add one", file=sys.stderr)\nsys.exit(1)\n'
CRASH = 'raise ValueError("a bug, not the input")\n'
QUIT = 'import sys\nsys.exit("[quit] error: seed must be a number; set seed: 42")\n'


def project(root: Path) -> Path:
    stages = {"probe": {"cmd": "python -m tasks.probe", "deps": ["tasks/probe.py", "tasks/helper.py"],
                        "outs": [{"probe.json": {"cache": False}}]},
              "refuse": {"cmd": "python -m tasks.refuse", "deps": ["tasks/refuse.py"]},
              "crash": {"cmd": "python -m tasks.crash", "deps": ["tasks/crash.py"]},
              "quit": {"cmd": "python -m tasks.quit", "deps": ["tasks/quit.py"]},
              "evaluate": {"cmd": "python -m tasks.evaluate", "deps": ["tasks/evaluate.py"]},
              "register": {"cmd": "python -m tasks.register", "deps": ["tasks/register.py", "tasks/helper.py"],
                           "outs": [{"register.json": {"cache": False}}]}}
    (root / "tasks").mkdir()
    for name, text in (("__init__", ""), ("probe", PROBE), ("helper", 'VALUE = "one"\n'), ("refuse", REFUSE), ("crash", CRASH),
                       ("quit", QUIT), ("evaluate", 'print("evaluated")\n'), ("register", PROBE)):
        (root / "tasks" / f"{name}.py").write_text(text)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """The DVC project above, the working directory of the test."""
    root = project(tmp_path)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.chdir(root)
    return root


def forked_run(dvc: DvcProcess, root: Path, **kwargs) -> dict:
    """repro("probe") until it runs forked: the first requests may come while the libraries are
    still being imported (they then start a new interpreter, as DVC does)."""
    deadline = time.monotonic() + 90
    while True:
        assert dvc.repro("probe", force=True, **kwargs).ran
        seen = json.loads((root / "probe.json").read_text())
        if seen["torch_before"] or time.monotonic() > deadline:
            return seen
        time.sleep(1)


def test_a_stage_runs_forked_from_the_warm_dvc_process_with_its_own_env_and_fresh_code(root):
    lines: list[str] = []
    with DvcProcess(plan=True, warm="image") as dvc:
        assert "probe" in dvc.plan().stale
        seen = forked_run(dvc, root, env={"STAGE_RUN": "run-1"}, on_line=lines.append)
        assert seen["torch_before"], "the stage never ran forked from the warm DVC process"
        assert (seen["run"], seen["cwd"], seen["gc_on"]) == ("run-1", str(root), True)  # as in a new interpreter
        assert not seen["stdin_is_a_pipe"]  # the DVC process's stdin carries the flow's requests
        assert seen["project_before"] == []  # the project's code is imported afresh, not the DVC process's copy
        assert "probe says one" in lines
        # code changed after the DVC process started: what runs is what DVC hashes now
        (root / "tasks/helper.py").write_text('VALUE = "two"\n')
        assert dvc.repro("probe", env={"STAGE_RUN": "run-2"}).ran
        seen = json.loads((root / "probe.json").read_text())
        assert (seen["value"], seen["run"], seen["torch_before"]) == ("two", "run-2", True)
        # a stage that refuses its input and one that crashes fail as they would in their own process
        with pytest.raises(StageRefused, match="row 3 has no label; add one"):
            dvc.repro("refuse")
        with pytest.raises(StageFailed, match="ValueError: a bug, not the input"):
            dvc.repro("crash")
        with pytest.raises(StageRefused, match="seed must be a number; set seed: 42"):
            dvc.repro("quit")
        assert not dvc.repro("probe").ran  # the same DVC process goes on; DVC itself skips the probe now
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "probe"], capture_output=True, text=True, check=True)
    assert status.stdout.strip() == "Data and pipelines are up to date."


def test_the_registry_stages_are_forked_from_a_second_process_that_imported_mlflow(root):
    # only register and promote use MLflow: imported beside the other stages, not inside them
    with DvcProcess(plan=True, warm="image") as dvc:
        dvc.plan()
        probe = forked_run(dvc, root)
        assert not probe["mlflow_before"]
        assert dvc.repro("register", env={"STAGE_RUN": "run-3"}).ran
        seen = json.loads((root / "register.json").read_text())
        assert (seen["torch_before"], seen["mlflow_before"], seen["gc_on"]) == (True, True, True)
        assert (seen["run"], seen["cwd"], seen["project_before"]) == ("run-3", str(root), [])
        assert not seen["stdin_is_a_pipe"]
        registry = psutil.Process(seen["ppid"])  # not the DVC process: a child of it
        assert seen["ppid"] != probe["ppid"] and registry.ppid() == probe["ppid"]
        assert registry.name() == REGISTRY_NAME  # what bench/run_trace.py tells it from a stage by
        lines: list[str] = []
        assert dvc.repro("evaluate", on_line=lines.append).ran and "evaluated" in lines  # the others still from here
        (root / "tasks/helper.py").write_text('VALUE = "fail"\n')
        with pytest.raises(StageFailed, match="ValueError: told to fail"):
            dvc.repro("register")
        (root / "tasks/helper.py").write_text('VALUE = "again"\n')
        assert dvc.repro("register").ran
        assert json.loads((root / "register.json").read_text())["ppid"] == registry.pid  # the same process
    registry.wait(timeout=10)  # stopped with its DVC process


def test_without_warm_a_stage_starts_a_new_interpreter(root):
    with DvcProcess(plan=True) as dvc:
        dvc.plan()
        assert dvc.repro("probe").ran
    assert not json.loads((root / "probe.json").read_text())["torch_before"]  # DVC's runner: a new interpreter


@pytest.mark.parametrize("stage", ["probe", "register"])
def test_an_interrupted_forked_stage_is_stopped_with_its_dvc_process(root, stage):
    with DvcProcess(plan=True, warm="image") as dvc:
        dvc.plan()
        forked_run(dvc, root)
        (root / "tasks/helper.py").write_text('VALUE = "sleep"\n')

        def interrupt(line: str) -> None:
            if line == "probe says sleep":
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            dvc.repro(stage, on_line=interrupt)
    seen = json.loads((root / f"{stage}.json").read_text())
    assert seen["torch_before"]
    for pid in (seen["pid"], seen["ppid"]):  # the stage, and the process that forked it
        with contextlib.suppress(psutil.NoSuchProcess):  # gone already
            psutil.Process(pid).wait(timeout=10)  # psutil.TimeoutExpired: it outlived its DVC process
        assert not psutil.pid_exists(pid)


def test_the_warm_up_leaves_pydantic_ready_for_a_forked_stage_to_build_its_params_schema():
    """The warm-up builds one pydantic model, so a fork does not import pydantic's parts or look
    for its plugins in every installed package's entry points (0.06 s of each stage's 0.1 s)."""
    probe = ("import sys; from transferline.warmstart import _import; _import(('pydantic',)); "
             "from pydantic.plugin import _loader; "
             "print('pydantic.fields' in sys.modules, 'pydantic.functional_validators' in sys.modules, "
             "_loader._plugins is not None)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["True", "True", "True"], done.stdout + done.stderr
