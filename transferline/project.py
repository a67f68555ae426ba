"""A project made by `transferline init`: its template files, and the code its stages run.

In this repository dvc.yaml lists each stage's code files as deps. A project
made by `init` has no copy of the code: `python -m tasks.<stage>` runs the
installed package. Its files sit in site-packages, a path that is outside the
project and differs per machine, so DVC cannot depend on them there. Instead
each stage depends on `code/<modality>/<stage>.txt`: the sha256 of every file
that stage runs, the same list as the package's dvc.yaml (which
tests/test_dvc_deps.py keeps exact). `transferline run` and `check` rewrite
these files before they ask DVC, so upgrading or editing the package reruns
exactly the stages whose code changed, and a colleague with the same package
(the files are committed) skips everything. The package version is written
to `code/VERSION` for people to read; it is no dep, so a version bump that
changes no stage's code reruns nothing.
"""

from __future__ import annotations

import hashlib
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

import transferline

PACKAGE = Path(transferline.__file__).resolve().parent
# A wheel carries the repository's dvc.yaml, params.yaml and .dvcignore here
# (pyproject: force-include); an editable install reads them at the repository root.
BUNDLED = PACKAGE / "_project"
CODE_DIR = Path("code")
MODALITIES = ("image", "text")
_CODE_DEP = re.compile(r"^(tasks|transferline|flows)/.*\.py$")
HEADER = ("# The installed transferline code this stage runs (sha256, file), rewritten by `transferline run`\n"
          "# and `transferline check`: dvc.yaml lists this file so a code change reruns the stage.\n")


def template(name: str) -> Path:
    """The package's own copy of a project file (dvc.yaml, params.yaml, .dvcignore)."""
    for path in (BUNDLED / name, PACKAGE.parent / name):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{name} is missing from the installed transferline package ({BUNDLED}); reinstall it")


def package_version() -> str:
    try:
        return version("transferline")
    except PackageNotFoundError:
        return "unknown"


def _stages() -> dict[str, dict]:
    return yaml.safe_load(template("dvc.yaml").read_text())["stages"]


def code_files(spec: dict, modality: str) -> list[str]:
    """The code files (relative to site-packages) a stage's deps list for a modality."""
    deps = [d.replace("${modality}", modality) for d in spec.get("deps", []) if isinstance(d, str)]
    return sorted(d for d in deps if _CODE_DEP.match(d))


def code_listing(spec: dict, modality: str) -> str:
    """`sha256  file` per line, like sha256sum: a diff of two versions names the changed files."""
    lines = [f"{hashlib.sha256((PACKAGE.parent / f).read_bytes()).hexdigest()}  {f}\n"
             for f in code_files(spec, modality)]
    return HEADER + "".join(lines)


def project_dvc_yaml() -> str:
    """The package's dvc.yaml with each stage's code deps replaced by its `code/` listing."""
    doc = yaml.safe_load(template("dvc.yaml").read_text())
    for name, spec in doc["stages"].items():
        rest = [d for d in spec["deps"] if not (isinstance(d, str) and _CODE_DEP.match(d))]
        spec["deps"] = [f"{CODE_DIR}/${{modality}}/{name}.txt", *rest]
    return ("# The pipeline of a project made by `transferline init`: the stages run the installed\n"
            "# transferline package (python -m tasks.<stage>); code/<modality>/<stage>.txt stands for its\n"
            "# code (transferline/project.py says why). Values live in params.yaml.\n"
            + yaml.safe_dump(doc, sort_keys=False, width=120))


def _wanted(root: Path) -> dict[Path, str]:
    files = {root / CODE_DIR / "VERSION": f"transferline {package_version()}\n"}
    for name, spec in _stages().items():
        for modality in MODALITIES:
            files[root / CODE_DIR / modality / f"{name}.txt"] = code_listing(spec, modality)
    return files


def is_init_project(root: str | Path = ".") -> bool:
    return (Path(root) / CODE_DIR / "VERSION").is_file()


def stale_code(root: str | Path = ".") -> list[str]:
    """`code/` files the installed package no longer matches (nothing written); [] outside an init project."""
    root = Path(root)
    if not is_init_project(root):
        return []
    return [str(p.relative_to(root)) for p, text in _wanted(root).items()
            if not p.is_file() or p.read_text() != text]


def refresh_code(root: str | Path = ".") -> list[str]:
    """Rewrite the `code/` files that differ from the installed package; the ones rewritten."""
    root = Path(root)
    if not is_init_project(root):
        return []
    changed = []
    for path, text in _wanted(root).items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(str(path.relative_to(root)))
    return changed


def write_code(root: str | Path) -> None:
    """The `code/` folder of a new project."""
    (Path(root) / CODE_DIR / "VERSION").parent.mkdir(parents=True, exist_ok=True)
    (Path(root) / CODE_DIR / "VERSION").write_text("")
    refresh_code(root)


def data_files(root: str | Path = ".") -> list[Path]:
    """The `.dvc` files of the project's own data (data/external/...): `dvc add`ed or imported."""
    return sorted((Path(root) / "data/external").rglob("*.dvc"))


def sync_data(root: str | Path = ".", update_imports: bool = False) -> list[str]:
    """Record the data as it is now; the `.dvc` files that changed.

    A `dvc add`ed folder the user edited is committed again (`dvc commit`), so the
    data DVC pushes is the data the run read and `dvc status` is clean after it. An
    imported one is fetched again only when `update_imports` (the check: `dvc update`
    downloads a newer version from its source, and the ingest stage sees it)."""
    root = Path(root)
    files = data_files(root) if is_init_project(root) else []
    if not files:
        return []  # importing DVC and opening the repository cost most of a second: every run asks
    from dvc.repo import Repo

    changed = []
    with Repo(str(root)) as repo:
        for file in files:
            before = file.read_text()
            if "deps" in (yaml.safe_load(before) or {}):
                if update_imports:
                    repo.update([str(file)])
            else:
                repo.commit(str(file), force=True)
            if file.read_text() != before:
                changed.append(str(file.relative_to(root)))
    return changed


def prepare(root: str | Path = ".", update_imports: bool = False) -> list[str]:
    """Before DVC is asked what is stale: the code listings and the data (above); what changed."""
    return refresh_code(root) + sync_data(root, update_imports)
