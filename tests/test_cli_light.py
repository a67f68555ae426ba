"""The CLI stays light: `--help` imports no torch, Prefect or MLflow, and the
read-only registry commands (status, history, lineage) read a local SQLite
store without any of them (transferline.storeview). Checked on the real
command in a fresh interpreter with `python -X importtime`, which also names
who imported a module."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from conftest import MLFLOW_ENV, ROOT, tiny_raw_params

NAME = "light-cli"
HELP_LIMIT_S = 2.0  # a safe CI bound; about 0.6 s on an idle 2-core machine
TORCH_FREE_CONFIG = ("transferline.config must be torch-free for this (issue 12: the torch-free config "
                     "package); until it lands, config imports torch through transferline.models")


def cli(args: list[str], cwd: Path, importtime: bool = False, columns: int = 200) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV}
    env.update(COLUMNS=str(columns), NO_COLOR="1")
    flags = ["-X", "importtime"] if importtime else []
    return subprocess.run([sys.executable, *flags, "-m", "transferline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def import_chains(stderr: str) -> dict[str, list[str]]:
    """{module: [module, its importer, ..., the first import]} from `-X importtime` output.

    The output lists a module after everything it imported, indented two spaces
    per level, so a module's importer is the next line one level up.
    """
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1]
            if name.strip() != "imported package":
                rows.append(((len(name) - len(name.lstrip()) - 1) // 2, name.strip()))
    chains = {}
    for i, (level, name) in enumerate(rows):
        chain, want = [name], level - 1
        for up_level, up_name in rows[i + 1:]:
            if want < 0:
                break
            if up_level == want:
                chain.append(up_name)
                want -= 1
        chains[name] = chain
    return chains


def who_imported(chains: dict[str, list[str]], module: str) -> str | None:
    """'torch <- transferline.models <- transferline.config', or None if `module` was not imported."""
    return " <- ".join(chains[module]) if module in chains else None


def test_help_imports_no_torch_prefect_or_mlflow(tmp_path):
    done = cli(["--help"], tmp_path, importtime=True)
    assert done.returncode == 0 and "Usage:" in done.stdout, done.stdout + done.stderr
    chains = import_chains(done.stderr)
    assert "transferline.cli" in chains and "typer" in chains  # the parse read real output
    torch = who_imported(chains, "torch")
    assert torch is None, f"--help imported torch via {torch}; import it inside the command that needs it"
    # nor the params schema (pydantic, about 0.2 s of a 0.4 s --help): a command loads it when it runs
    for module in ("prefect", "mlflow", "pydantic"):
        via = who_imported(chains, module)
        assert via is None, f"--help imported {module} via {via}"


def test_help_answers_within_two_seconds(tmp_path):
    seconds = []
    for _ in range(3):
        t0 = time.perf_counter()
        done = cli(["--help"], tmp_path)
        seconds.append(time.perf_counter() - t0)
        assert done.returncode == 0
    print(f"transferline --help: {', '.join(f'{s:.2f}' for s in seconds)} s "
          f"(median {statistics.median(seconds):.2f} s; limit {HELP_LIMIT_S} s on the best run)")
    assert min(seconds) < HELP_LIMIT_S


@contextmanager
def mlflow_env_kept():
    """mlflow.set_tracking_uri writes into os.environ; later tests must not see it."""
    saved = {k: os.environ.get(k) for k in MLFLOW_ENV}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def registry_client(project: Path):
    import mlflow

    from transferline import tracking
    from transferline.config import parse_params

    tracking.configure(parse_params(yaml.safe_load((project / "params.yaml").read_text())).tracking)
    return mlflow.MlflowClient()


def make_registry_project(project: Path) -> Path:
    """A project folder whose SQLite registry holds one champion version with metrics,
    lineage tags and one logged alias move."""
    from transferline.champion import move_alias

    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    raw = tiny_raw_params(tracking={"uri": f"sqlite:///{project / 'mlflow.db'}",
                                    "artifact_root": str(project / "mlartifacts"), "experiment": "light"},
                          register={"model_name": NAME})
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with mlflow_env_kept():
        client = registry_client(project)
        client.create_registered_model(NAME)
        client.create_model_version(NAME, source=str(project / "model"),
                                    tags={"accuracy": "0.91", "git.commit": "0123abc"})
        move_alias(client, NAME, "1", "forced", "light-cli test setup", None)
    return project


@pytest.fixture(scope="module")
def registry_project(tmp_path_factory) -> Path:
    return make_registry_project(tmp_path_factory.mktemp("light"))


@pytest.mark.parametrize("command", ["status", "history", "lineage"])
def test_registry_reads_import_no_mlflow_torch_or_prefect(registry_project, command):
    done = cli([command, "--json"], registry_project, importtime=True)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout)
    if command == "status":
        assert info["champion"]["version"] == "1" and info["champion"]["metrics"] == {"accuracy": 0.91}
    elif command == "history":
        assert info["champion"] == "1"
        assert [(m["action"], m["to"], m["reason"]) for m in info["moves"]] == [
            ("forced", "1", "light-cli test setup")]
    else:
        assert (info["version"], info["aliases"], info["code"]) == ("1", ["champion"], {"commit": "0123abc"})
    chains = import_chains(done.stderr)
    for module in ("mlflow", "prefect", "torch"):
        via = who_imported(chains, module)
        hint = f" {TORCH_FREE_CONFIG}" if module == "torch" else ""
        assert via is None, f"{command} imported {module} via {via}.{hint}"


def test_history_table_in_a_narrow_terminal_keeps_each_moves_time_and_action(registry_project):
    """NARROW columns: the reason wraps; the time and the action are whole, never cut with an ellipsis."""
    from transferline.cli.registry import NARROW

    done = cli(["history"], registry_project, columns=NARROW)
    assert done.returncode == 0, done.stderr[-3000:]
    move = json.loads(cli(["history", "--json"], registry_project).stdout)["moves"][0]
    day, time_of_day = move["at"].removesuffix("+00:00").split("T")
    cells = [line.split("│")[1:3] for line in done.stdout.splitlines() if line.startswith("│")]
    when = " ".join(c[0].strip() for c in cells if c[0].strip())
    assert when == f"{day} {time_of_day}", done.stdout
    assert cells[0][1].strip() == move["action"] and "…" not in done.stdout, done.stdout
    assert max(len(line) for line in done.stdout.splitlines()) <= NARROW, done.stdout


@pytest.mark.parametrize("columns", [60, 80])
def test_history_in_a_narrow_terminal_is_a_block_per_move(registry_project, columns):
    """Below NARROW (a default 80-column terminal too): a seven-column table would fold every
    word; each move is a block of whole lines."""
    from transferline.cli.registry import NARROW

    assert NARROW > columns
    done = cli(["history"], registry_project, columns=columns)
    assert done.returncode == 0, done.stderr[-3000:]
    move = json.loads(cli(["history", "--json"], registry_project).stdout)["moves"][0]
    when = move["at"].replace("T", " ").removesuffix("+00:00")
    lines = done.stdout.splitlines()
    assert f"{when} UTC  {move['action']}  - -> {move['to']}  by {move['by']}" in lines, done.stdout
    assert f"  {move['reason']}" in lines and "┃" not in done.stdout, done.stdout
    assert max(len(line) for line in lines) <= columns, done.stdout

READS = ("status", "history", "lineage")


def kept(project: Path) -> dict[str, tuple[int, int]]:
    """{readcache entry: (modification time, inode)}: a read that asked the store rewrites its entry."""
    from transferline.readcache import FOLDER

    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (project / FOLDER).glob("*.json")}


def reads(project: Path) -> dict[str, tuple[dict, bool]]:
    """{command: (its --json answer, whether it asked the store)} for the three read-only commands."""
    answers = {}
    for command in READS:
        before = kept(project)
        done = cli([command, "--json"], project)
        assert done.returncode == 0, done.stderr[-3000:]
        answers[command] = json.loads(done.stdout), kept(project) != before
    return answers


def test_registry_reads_are_kept_until_the_store_changes(tmp_path):
    """A repeated read-only command answers from .transferline/readcache, the same answer; a write
    to the store by another client, or a new register.json, and it asks the store again."""
    from transferline.champion import move_alias

    project = make_registry_project(tmp_path)
    first = reads(project)
    assert all(asked for _, asked in first.values())
    again = reads(project)
    assert {c: a for c, (a, _) in again.items()} == {c: a for c, (a, _) in first.items()}
    asked = [c for c, (_, a) in again.items() if a]
    assert asked == [], f"a repeated read asked the store: {asked}"

    with mlflow_env_kept():  # another client moves the champion
        client = registry_client(project)
        client.create_model_version(NAME, source=str(project / "model2"), tags={"accuracy": "0.95"})
        move_alias(client, NAME, "2", "forced", "a newer model", "1")
    moved = reads(project)
    assert all(asked for _, asked in moved.values())
    assert moved["status"][0]["champion"]["version"] == "2"
    assert moved["status"][0]["champion"]["metrics"] == {"accuracy": 0.95}
    assert [m["to"] for m in moved["history"][0]["moves"]] == ["1", "2"]
    assert moved["lineage"][0]["version"] == "2"

    # status also reads reports/register.json (the registry gap): a new one is seen at once
    (project / "reports").mkdir(exist_ok=True)
    (project / "reports" / "register.json").write_text(json.dumps({"name": NAME, "version": "9", "run_id": "r"}))
    done = cli(["status", "--json"], project)
    assert "version 9" in (json.loads(done.stdout)["registry_gap"] or ""), done.stdout


EXIT_FAST = """
import atexit, sys
from pathlib import Path
from transferline.env import exit_fast

def main():
    import logging
    atexit.register(lambda: Path(sys.argv[2]).write_text("handler ran"))  # a library's own exit handler
    logging.getLogger("tl").warning("logged")
    print("x" * 100_000, end="")  # buffered: must reach the pipe
    if sys.argv[1] == "raise":
        raise RuntimeError("boom")
    sys.exit(int(sys.argv[1]))

exit_fast(main)
"""


@pytest.mark.parametrize(("how", "code"), [("0", 0), ("3", 3), ("raise", 1)])
def test_exit_fast_keeps_status_output_and_exit_handlers(tmp_path, how, code):
    """transferline.env.exit_fast skips the interpreter's teardown, nothing else: the status
    `main` ended with, everything printed or logged, and the libraries' exit handlers."""
    marker = tmp_path / "marker"
    done = subprocess.run([sys.executable, "-c", EXIT_FAST, how, str(marker)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == code, done.stderr[-2000:]
    assert done.stdout == "x" * 100_000
    assert "logged" in done.stderr
    assert marker.read_text() == "handler ran"
    assert ("RuntimeError: boom" in done.stderr) == (how == "raise")


def test_cli_exit_status_through_exit_fast(tmp_path):
    """The console command's status survives the quick exit: a usage error is 2, --help 0."""
    assert cli(["--help"], tmp_path).returncode == 0
    bad = cli(["no-such-command"], tmp_path)
    assert bad.returncode == 2 and "No such command" in bad.stderr


IMPORTS_WITHOUT_GC = """
import gc, json
from transferline.env import imports_without_gc

seen = {"before": gc.isenabled()}
with imports_without_gc():
    with imports_without_gc():
        import email.mime.text  # anything not imported yet
        seen["inner"] = gc.isenabled()
    seen["outer"] = gc.isenabled()  # the inner block leaves it off: the outer one is still importing
seen.update(after=gc.isenabled(), frozen=gc.get_freeze_count())
print(json.dumps(seen))
"""


def test_imports_without_gc_turns_the_collector_off_then_on_and_freezes_what_is_alive():
    """transferline.env.imports_without_gc (the CLI's, the flow's and the warm DVC process's imports)."""
    done = subprocess.run([sys.executable, "-c", IMPORTS_WITHOUT_GC], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout)
    assert (seen["before"], seen["inner"], seen["outer"], seen["after"]) == (True, False, False, True)
    assert seen["frozen"] > 1000  # what the interpreter and the imports made: never walked again
