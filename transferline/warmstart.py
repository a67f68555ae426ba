"""A stage's command run in a fork of the DVC process, which has imported torch and MLflow once.

DVC runs a stage's `cmd` (`python -m tasks.<stage>`) in a new shell and a new interpreter,
which imports torch (and MLflow for the registry stages) all over again: 1.5-3 s a stage on
2 cores, paid by five of the nine stages (bench/overhead.py). The flow's DVC process
(transferline.dvcrun) imports those libraries once (`warm_up`) and has DVC run such a
command through `run_forked`: a fork of that process runs the same module as `__main__`,
as `python -m` would, with DVC's working directory and environment. DVC still decides
what runs, hashes the outputs and writes dvc.lock; any other command goes to DVC's own
runner. `dvc repro` from a shell never comes here.

Only third-party libraries are imported ahead: the stage imports the project's code
afresh, after DVC hashed it, so the code that runs is the code dvc.lock records.
`orchestrate.warm_stages: false` turns this off.

MLflow is imported later, while the first long stage runs (`LATE_DURING`), in a
thread at the lowest CPU priority: only register and promote use it, and it costs 3-5 s of
CPU. At the start of a run every core is busy (the CLI's imports, DVC's, the first
stages), and imported then it kept validate and split in new interpreters; training leaves
a few per cent of two cores idle, which is enough in a default run.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import logging
import os
import re
import runpy
import signal
import sys
import threading
import traceback
from collections.abc import Callable

from transferline.env import imports_without_gc

log = logging.getLogger(__name__)

# What the stages import that is slow to import; none of it reads the environment a stage
# changes (its MLflow run is read when used). pydantic, yaml: every stage's params; MLflow's
# SQL stores: register and promote on the default tracking URI (1 s to import).
MLFLOW = ("mlflow", "mlflow.pyfunc", "mlflow.models", "mlflow.store.tracking.sqlalchemy_store",
          "mlflow.store.model_registry.sqlalchemy_store")
WARM_IMPORTS = {
    "image": ("numpy", "yaml", "pydantic", "PIL.Image", "sklearn.model_selection", "torch", "torchvision",
              "safetensors.torch", "tqdm", "matplotlib.pyplot"),
    "text": ("numpy", "yaml", "pydantic", "pandas", "torch", "transformers", "safetensors.torch", "tqdm",
             "matplotlib.pyplot"),
}
LATE_DURING = ("tasks.pretrain", "tasks.finetune", "tasks.evaluate")  # the first of them forked
LATE_THREAD = "warm-up-late"
_monitor_interval = [10]  # tqdm's, restored in a forked stage
# The stage commands dvc.yaml writes; anything else runs as DVC would run it.
STAGE_CMD = re.compile(r"python -m (tasks\.\w+)")


def warm_up(modality: str) -> None:
    """Import the modality's slow libraries (in a thread) and point DVC's command runner at `run_forked`.

    While another thread runs (the imports' own, until they are done: the first stages need
    none of them), a command goes to DVC's own runner: a fork copies only the thread that forks.
    DVC's runner stays untouched where this DVC has no `dvc.stage.run._run` to replace."""
    import dvc.stage.run as dvc_run
    from tqdm import tqdm
    from tqdm._monitor import TMonitor

    original = getattr(dvc_run, "_run", None)
    if original is None:
        log.warning("this DVC has no dvc.stage.run._run: stages start in new interpreters")
        return
    # DVC's progress bars start tqdm's monitor thread: none from now on (a stage's own bars may)
    tqdm.monitor_interval, _monitor_interval[0] = 0, tqdm.monitor_interval
    for thread in threading.enumerate():
        if isinstance(thread, TMonitor):
            thread.exit()
            thread.tqdm_cls.monitor = None
    _start_import(WARM_IMPORTS.get(modality, ()), "warm-up")
    late = [MLFLOW]  # imported once, from the fork of the first of LATE_DURING on

    def after_fork(module: str) -> None:
        if module in LATE_DURING and late:
            _start_import(late.pop(), LATE_THREAD, lowest=True)

    def run(executable: str | None, cmd: str, **kwargs: object) -> None:
        if (match := STAGE_CMD.fullmatch(cmd.strip())) is None:
            return original(executable, cmd, **kwargs)
        for thread in threading.enumerate():
            if thread.name == LATE_THREAD:
                thread.join()  # shorter than a new interpreter importing torch again
        if threading.active_count() > 1:
            return original(executable, cmd, **kwargs)
        run_forked(match[1], cmd, str(kwargs["cwd"]), dict(kwargs["env"]),  # type: ignore[arg-type]
                   then=lambda: after_fork(match[1]))

    dvc_run._run = run


def _start_import(modules: tuple[str, ...], name: str, lowest: bool = False) -> None:
    threading.Thread(target=_import, args=(modules, lowest), name=name, daemon=True).start()


def _import(modules: tuple[str, ...], lowest: bool = False) -> None:
    if lowest and sys.platform == "linux":  # a Linux thread is a task of its own: this one alone
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    with imports_without_gc():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 - a stage that needs it says so in its own words
                log.debug("warm-up: %s not imported (%s)", name, err)
    if "pydantic" in modules:
        with contextlib.suppress(Exception):
            _build_a_pydantic_model()
    if "mlflow" in modules:
        # MLflow maps every installed module to its package (0.7 s) to check a model's requirements
        # when it logs or loads one (register, promote); the installed packages do not change in a run.
        with contextlib.suppress(Exception):
            from mlflow.utils import requirements_utils

            requirements_utils._init_modules_to_packages_map()


def _build_a_pydantic_model() -> None:
    """pydantic imports its parts when first used, and looks for plugins in every installed
    package's entry points when it builds its first model: 0.06 s of each stage's 0.1 s of
    building its params schema in the fork. Done here once, the forks inherit it."""
    from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator  # noqa: F401

    class Warm(BaseModel):
        model_config = ConfigDict(extra="forbid")
        value: int = Field(0, ge=0)

        @model_validator(mode="after")
        def same(self) -> Warm:
            return self

    Warm(value=1)


def run_forked(module: str, cmd: str, cwd: str, env: dict[str, str], then: Callable[[], None] = lambda: None) -> None:
    """Run `module` as `__main__` in a fork (`then`: called here once it is forked); raise DVC's
    StageCmdFailedError where it exits non-zero."""
    from dvc.stage.exceptions import StageCmdFailedError

    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child writes what is buffered here a second time
    pid = os.fork()
    if pid == 0:
        _child(module, cwd, env)  # never returns
    then()
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as DVC's runner: Ctrl-C is the stage's to handle
    try:
        _, status = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGINT, ignored)
    if (code := os.waitstatus_to_exitcode(status)) != 0:
        raise StageCmdFailedError(cmd, code)


def _child(module: str, cwd: str, env: dict[str, str]) -> None:
    """The forked stage: a new interpreter's state where it matters, the module as `python -m` runs it."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        gc.enable()  # as in a new interpreter (forks happen with no import under way: it is on)
        from tqdm import tqdm

        tqdm.monitor_interval = _monitor_interval[0]
        atexit._clear()  # the DVC process's exit handlers are not this process's
        for handler in logging.root.handlers[:]:  # the stage configures logging itself
            logging.root.removeHandler(handler)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # the DVC process's stdin carries the flow's requests
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.path[0] = cwd  # `python -m` puts the working directory first
        for name in [m for m in sys.modules if m.split(".")[0] in ("transferline", "tasks")]:
            del sys.modules[name]  # the project's code as it is now, the code DVC has just hashed
        sys.argv = [module]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as err:  # as the interpreter ends on it: sys.exit("why") prints why, exits 1
        code = err.code if isinstance(err.code, int) else int(err.code is not None)
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - printed as the interpreter would, then exit 1
        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()  # the stage's own (tasks._stage exits from here itself)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)
