"""Copy this pipeline into a fresh git + DVC project folder.

Used by the end-to-end tests and the benchmarks to run the real pipeline in
isolation, with its own params, DVC cache, remote, MLflow DB and Prefect home.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]  # tests/kit/scaffold.py -> the repository root
CODE = ("tasks", "transferline", "flows", "data/external")
FILES = ("dvc.yaml", ".dvcignore", ".gitignore")


def make_project(dest: Path, raw_params: dict, root: Path = ROOT) -> Path:
    """dest/ with a copy of the code and dvc.yaml, the given params, git and DVC
    initialised, and a DVC remote at dest/.remote."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        shutil.copy(root / name, dest / name)
    for code in CODE:
        shutil.copytree(root / code, dest / code, ignore=shutil.ignore_patterns("__pycache__"))
    (dest / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))

    def run(*cmd: str) -> None:
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True, text=True)

    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    run(sys.executable, "-m", "dvc", "config", "core.analytics", "false")
    run(sys.executable, "-m", "dvc", "remote", "add", "-d", "local", str(dest / ".remote"))
    return dest
