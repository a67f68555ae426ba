"""A stage's command run in a fork of the DVC process, which has imported torch and MLflow once.

DVC runs a stage's `cmd` (`python -m tasks.<stage>`) in a new shell and a new interpreter,
which imports torch (and MLflow for the registry stages) all over again: 1.5-3 s a stage on
2 cores, paid by five of the nine stages (bench/overhead.py). The flow's DVC process
(transferline.dvcrun) imports those libraries once (`warm_up`) and has DVC run such a
command through `fork_and_wait`: a fork of that process runs the same module as `__main__`,
as `python -m` would, with DVC's working directory and environment. DVC still decides
what runs, hashes the outputs and writes dvc.lock; any other command goes to DVC's own
runner. `dvc repro` from a shell never comes here.

Only third-party libraries are imported ahead: the stage imports the project's code
afresh, after DVC hashed it, so the code that runs is the code dvc.lock records.
`orchestrate.warm_stages: false` turns this off.

MLflow (2 s of CPU) only register and promote use (`REGISTRY_STAGES`): they are forked from a
second process, `_RegistryForks`, itself forked from this one once the warm-up is done (at the
first stage forked), which imports MLflow at the lowest CPU priority while the next stages
run and then forks those two. Imported by a thread of this process instead, it had to be
done before the next fork (a fork copies only the thread that forks): it ran inside
pretraining, where each slice it took stalled training's other thread (pretraining's own
work 1.1 s longer, default size, 3 alternated triples), and fine-tuning then waited
0.8 s for the rest. Imported at the start with the rest, it kept validate and split in
new interpreters.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import json
import logging
import os
import re
import runpy
import signal
import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

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
REGISTRY_STAGES = ("tasks.register", "tasks.promote")  # forked from _RegistryForks, which has MLflow
REGISTRY_NAME = "tl-registry"  # its name in `ps -o comm` (and its stages'), beside the DVC process's "python"
_monitor_interval = [10]  # tqdm's, restored in a forked stage
# The stage commands dvc.yaml writes; anything else runs as DVC would run it.
STAGE_CMD = re.compile(r"python -m (tasks\.\w+)")


def warm_up(modality: str) -> None:
    """Import the modality's slow libraries (in a thread) and have DVC fork its stage commands from here.

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
    registry: list[_RegistryForks] = []  # started at the first stage forked: the warm-up is done

    def run(executable: str | None, cmd: str, **kwargs: object) -> None:
        if (match := STAGE_CMD.fullmatch(cmd.strip())) is None or threading.active_count() > 1:
            return original(executable, cmd, **kwargs)  # not a stage module, or the imports under way
        module, cwd, env = match[1], str(kwargs["cwd"]), dict(kwargs["env"])  # type: ignore[call-overload]
        if not registry:
            registry.append(_RegistryForks())
        code = registry[0].run(module, cwd, env) if module in REGISTRY_STAGES else None
        if code is None:  # any other stage, or the registry process is gone: forked from here
            code = fork_and_wait(module, cwd, env)
        if code != 0:
            from dvc.stage.exceptions import StageCmdFailedError

            raise StageCmdFailedError(cmd, code)

    dvc_run._run = run


def _start_import(modules: tuple[str, ...], name: str, lowest: bool = False) -> threading.Thread:
    thread = threading.Thread(target=_import, args=(modules, lowest), name=name, daemon=True)
    thread.start()
    return thread


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


def _fork() -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # or the child writes what is buffered here a second time
    return os.fork()


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """While a stage runs, as DVC's runner: Ctrl-C is the stage's to handle."""
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, ignored)


def fork_and_wait(module: str, cwd: str, env: dict[str, str]) -> int:
    """Run `module` as `__main__` in a fork of this process; its exit code."""
    if (pid := _fork()) == 0:
        _child(module, cwd, env)  # never returns
    with _sigint_ignored():
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


class _RegistryForks:
    """A fork of the warm DVC process that imports MLflow, then forks the registry stages.

    It shares the DVC process's session (stopping that stops it and its stage) and streams;
    it ends when the DVC process closes its end of the requests. While it still imports, a
    request waits in the pipe."""

    def __init__(self) -> None:
        requests, self._requests = os.pipe()
        replies_in, replies = os.pipe()
        if _fork() == 0:
            os.close(self._requests)
            os.close(replies_in)
            _serve_registry(requests, replies)  # never returns
        os.close(requests)
        os.close(replies)
        self._replies = os.fdopen(replies_in, "rb", buffering=0)

    def run(self, module: str, cwd: str, env: dict[str, str]) -> int | None:
        """The stage's exit code; None where the process is gone before it got the request."""
        try:
            os.write(self._requests, (json.dumps([module, cwd, env]) + "\n").encode())
        except OSError:  # BrokenPipeError: it ended (killed); the stage runs from here
            return None
        with _sigint_ignored():
            line = self._replies.readline()
        return int(line) if line.strip() else 1  # no reply: it died while the stage ran


def _serve_registry(requests: int, replies: int) -> None:
    """The registry process: MLflow imported (in a thread at the lowest priority: the stages
    that run meanwhile keep both cores), then one forked stage per request line."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as the DVC process between stages
        with contextlib.suppress(OSError):  # Linux: what tells it from a stage, same command line
            Path("/proc/self/comm").write_text(REGISTRY_NAME)
        _start_import(MLFLOW, REGISTRY_NAME, lowest=True).join()
        with os.fdopen(requests, "rb") as lines:
            for line in lines:
                module, cwd, env = json.loads(line)
                os.write(replies, f"{fork_and_wait(module, cwd, env)}\n".encode())
    except BaseException:  # noqa: BLE001 - the DVC process sees no reply and fails the stage
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


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
